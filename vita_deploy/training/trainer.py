"""Training loop for VITA: AdamW (backbone lr x0.1, no weight decay on norms and embeddings), warm-up and a
step schedule, full-model gradient clipping, AMP on CUDA, checkpoints with --resume, JSONL log, loss-curve
PNG, periodic YouTube-VIS evaluation, and DistributedDataParallel under torchrun (nccl on GPU, gloo on CPU).

Official recipe (vita_spec.md section 4): AdamW, weight decay 0.05 (0 on norms and embeddings), backbone lr
x0.1, gradient clipping 0.01 (L2, full model), warm-up 10 iterations, lr x0.1 at a step.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vita_deploy.config import ModelConfig, get_config
from vita_deploy.data.dataset import ClipAugmentation, YTVISClipDataset, collate_clips
from vita_deploy.data.ytvis_json import load_ytvis_json
from vita_deploy.evaluation import evaluate_ytvis
from vita_deploy.files import atomic_write_text
from vita_deploy.pipeline.inference import eager_graphs, run_video
from vita_deploy.modeling.checkpoint import CheckpointError, _torch_load, load_state_dict_checked, save_checkpoint
from vita_deploy.modeling.pretrained import InitReport, init_from_weights
from vita_deploy.modeling.model import VitaModel, build_model
from vita_deploy.pipeline.preprocess import normalize_and_pad, padded_size
from vita_deploy.training.criterion import build_criterion, distributed_average
from vita_deploy.pipeline.video_io import read_image


@dataclass
class TrainConfig:
    """Everything a run needs besides the model config; stored in every checkpoint."""

    data: str
    out: str
    config: str = "tiny"
    iters: int = 2000
    batch_size: int = 4
    num_frames: int = 3
    sampling_frame_range: int = 5
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.05
    clip_grad: float = 0.01
    warmup_iters: int = 10
    lr_steps: tuple[float, ...] = (0.8,)  # fractions of `iters` where lr is multiplied by 0.1
    num_points: int = 2048
    amp: bool = True  # only on CUDA
    eval_every: int = 500
    ckpt_every: int = 250
    log_every: int = 10
    eval_videos: int = 0  # 0 = the whole valid split
    workers: int = 2
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW groups: backbone parameters at lr x backbone_lr_mult; no weight decay on norm layers and
    nn.Embedding (by module type, as Mask2Former's build_optimizer: raw Parameters such as level_embed decay)."""
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, norm_types) or isinstance(module, nn.Embedding):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():  # Swin's relative position tables, as the official optimizer
        if name.endswith(("relative_position_bias_table", "absolute_pos_embed")):
            no_decay.add(id(p))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (".backbone." in f".{name}", id(p) in no_decay)
        groups.setdefault(key, []).append(p)
    param_groups = [{"params": params, "lr": cfg.lr * (cfg.backbone_lr_mult if bb else 1.0),
                     "weight_decay": 0.0 if nd else cfg.weight_decay, "base_lr_mult": cfg.backbone_lr_mult if bb else 1.0}
                    for (bb, nd), params in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(it: int, cfg: TrainConfig) -> float:
    """Linear warm-up (from 1/warmup) then x0.1 at each step in `lr_steps`."""
    warm = min(1.0, (it + 1) / cfg.warmup_iters) if cfg.warmup_iters else 1.0
    return warm * 0.1 ** sum(it >= int(s * cfg.iters) for s in cfg.lr_steps)


def prepare_batch(batch: list[dict], model_cfg: ModelConfig, device: torch.device
                  ) -> tuple[torch.Tensor, list[dict]]:
    """Clips of different sizes -> images (B, T, 3, Hp, Wp) normalised and zero-padded to a common multiple of
    32, and targets with masks padded to (G, T, Hp, Wp)."""
    hp = max(padded_size(*c["images"].shape[-2:], model_cfg.input.size_divisibility)[0] for c in batch)
    wp = max(padded_size(*c["images"].shape[-2:], model_cfg.input.size_divisibility)[1] for c in batch)
    images, targets = [], []
    for clip in batch:
        x = normalize_and_pad(clip["images"].to(device), model_cfg.input)  # (T, 3, h32, w32)
        images.append(nn.functional.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2])))
        masks = clip["masks"].to(device)
        masks = nn.functional.pad(masks, (0, wp - masks.shape[-1], 0, hp - masks.shape[-2]))
        targets.append({"labels": clip["labels"].to(device), "ids": clip["ids"].to(device),
                        "masks": masks, "valid": clip["valid"].to(device)})
    return torch.stack(images), targets


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if cfg.device.startswith("cuda") and self.distributed:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed + self.rank)
        data = Path(cfg.data)
        self.train_set = YTVISClipDataset(data / "train.json", data / "train" / "JPEGImages", num_frames=cfg.num_frames,
                                          sampling_frame_range=cfg.sampling_frame_range,
                                          augment=ClipAugmentation.from_recipe(get_config(cfg.config).train),
                                          seed=cfg.seed + 1000 * self.rank)  # ranks draw different clips
        # The model predicts the data set's categories (contiguous index -> dataset id, names from the JSON).
        self.model_cfg = get_config(cfg.config).with_num_classes(self.train_set.num_classes,
                                                                 tuple(self.train_set.category_names))
        self.model: VitaModel = build_model(self.model_cfg).to(self.device)
        # Under DDP the number of target masks is averaged over processes, as in the official code.
        self.criterion = build_criterion(self.model_cfg.num_classes, num_points=cfg.num_points,
                                         frame_layers=self.model_cfg.frame_decoder.num_layers + 1,
                                         vita_layers=self.model_cfg.vita.dec_layers,
                                         num_masks_reducer=distributed_average if self.distributed else None
                                         ).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ddp = (nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index]
                                                        if self.device.type == "cuda" else None)
                    if self.distributed else self.model)
        self.iteration = 0
        self.out = Path(cfg.out)
        self.history: list[dict] = []

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save(self, name: str, training_state: bool = True) -> Path:
        """Weights, config and iteration; with `training_state` also optimizer and scaler (for --resume)."""
        state = dict(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict()) if training_state else {}
        return save_checkpoint(self.out / name, self.model, iteration=self.iteration, **state,
                               train_config={k: list(v) if isinstance(v, tuple) else v
                                             for k, v in asdict(self.cfg).items()})

    def resume(self, path: str | Path) -> None:
        data = _torch_load(Path(path))
        if "optimizer" not in data or "iteration" not in data:
            raise CheckpointError(f"{path} is not a training checkpoint of vita-deploy train (no optimizer state, "
                                  f"e.g. a model_final.pth): start a new run from its weights with "
                                  f"`vita-deploy train --init {path}`")
        load_state_dict_checked(self.model, data["model"], str(path))
        self.optimizer.load_state_dict(data["optimizer"])
        self.scaler.load_state_dict(data["scaler"])
        self.iteration = int(data["iteration"])
        log = self.out / "log.jsonl"
        if log.exists():  # drop what was logged after the checkpoint: those iterations are redone
            self.history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            self.history = [h for h in self.history if h.get("iter", 0) <= self.iteration]
            atomic_write_text(log, "".join(json.dumps(h) + "\n" for h in self.history))

    def initialise(self, path: str | Path) -> InitReport:
        """Start from the weights in `path` (see vita_deploy.modeling.pretrained); writes RUN/init_report.json
        (key by key: loaded, re-initialised, left at initialisation, unused) on rank 0."""
        report = init_from_weights(self.model, path)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "init_report.json", json.dumps(report.to_dict(), indent=1) + "\n")
        return report

    # -- loop ------------------------------------------------------------------------------------------------
    def batches(self):
        """Batches of clips for sample numbers iteration*batch_size onwards (exactly resumable)."""
        start = self.iteration * self.cfg.batch_size
        samples = range(start, max(start, self.cfg.iters * self.cfg.batch_size))
        loader = DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=samples,
                            num_workers=self.cfg.workers, collate_fn=collate_clips, drop_last=True)
        yield from loader

    def step(self, batch: list[dict]) -> dict[str, float]:
        images, targets = prepare_batch(batch, self.model_cfg, self.device)
        factor = lr_factor(self.iteration, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * group["base_lr_mult"] * factor
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            frame_out, vita_out, mask_features = self.ddp(images)
        loss, losses = self.criterion(frame_out, vita_out, mask_features, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {k: float(v) for k, v in losses.items()}
        out.update(loss=float(loss.detach()), lr=self.cfg.lr * factor, grad_norm=float(grad_norm))
        return out

    def train(self) -> dict:
        cfg = self.cfg
        main = self.rank == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.model.train()
        bar = tqdm(total=cfg.iters, initial=self.iteration, desc="train", unit="it", disable=not main,
                   dynamic_ncols=True)
        start, last_metrics = time.perf_counter(), {}
        for batch in self.batches():
            if self.iteration >= cfg.iters:
                break
            stats = self.step(batch)
            self.iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.1e}")
            if not main:
                continue
            if self.iteration % cfg.log_every == 0 or self.iteration == cfg.iters:
                record = {"iter": self.iteration, "time_s": round(time.perf_counter() - start, 2),
                          "world_size": self.world, **stats}
                self.history.append(record)
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            if cfg.ckpt_every and self.iteration % cfg.ckpt_every == 0:
                self.save("last.pth")
                plot_losses(self.history, self.out / "loss_curve.png")
            if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.iteration < cfg.iters:
                last_metrics = self.evaluate()
                self.model.train()
        bar.close()
        if main:
            self.save("last.pth")
            self.save("model_final.pth", training_state=False)  # weights only: a third of last.pth
            if cfg.eval_every:
                last_metrics = self.evaluate()
            plot_losses(self.history, self.out / "loss_curve.png")  # after the final evaluation, so it is drawn
        if self.distributed:
            dist.barrier()
        return last_metrics

    def evaluate(self) -> dict:
        """YouTube-VIS AP of the current weights on `<data>/valid.json` (skipped if it is absent)."""
        data = Path(self.cfg.data)
        gt_path = data / "valid.json"
        if not gt_path.exists():
            return {}
        gt = load_ytvis_json(gt_path)
        if not gt["annotations"]:
            return {}
        videos = gt["videos"][: self.cfg.eval_videos or None]
        gt = {**gt, "videos": videos,
              "annotations": [a for a in gt["annotations"] if a["video_id"] in {v["id"] for v in videos}]}
        self.model.eval()
        detector, vita = eager_graphs(self.model)
        results = []
        category_ids = sorted(c["id"] for c in gt["categories"])
        for video in tqdm(videos, desc="eval", unit="video", leave=False):
            frames = (data / "valid" / "JPEGImages" / name for name in video["file_names"])
            pred = run_video((read_image(f) for f in frames), detector, vita, self.model_cfg, device=self.device,
                             num_frames=len(video["file_names"]))
            results.extend(pred.to_ytvis(video["id"], category_ids))
        metrics = evaluate_ytvis(gt, results)
        record = {"iter": self.iteration, "eval": metrics}
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self.history.append(record)
        tqdm.write(f"iter {self.iteration}: " + "  ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
        return metrics


def plot_losses(history: list[dict], path: Path) -> None:
    """Loss curve (total and main terms) plus AP at evaluation points, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if "loss" in h]
    if not steps:
        return
    # Each record is one iteration's loss (one batch), so the curves are noisy: draw the total faintly and
    # every curve as a moving average over `window` records.
    window = max(1, len(steps) // 12)
    iters = np.array([h["iter"] for h in steps], dtype=float)

    def smooth(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
        kernel = np.ones(window) / window
        return np.convolve(iters, kernel, "valid"), np.convolve(np.asarray(values, dtype=float), kernel, "valid")

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(iters, [h["loss"] for h in steps], color="C0", alpha=0.25, lw=0.8)
    ax.plot(*smooth([h["loss"] for h in steps]), color="C0", label="total (weighted)")
    keys = ("loss_ce", "loss_mask", "loss_dice", "loss_vita_ce", "loss_vita_mask", "loss_vita_dice", "loss_vita_sim")
    for i, key in enumerate(k for k in keys if k in steps[0]):
        ax.plot(*smooth([h[key] for h in steps]), color=f"C{i + 1}", label=key, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel(f"iteration (moving average over {window} log records)" if window > 1 else "iteration")
    ax.set_ylabel("loss")
    evals = [h for h in history if "eval" in h]
    if evals:
        ax2 = ax.twinx()
        ax2.plot([h["iter"] for h in evals], [h["eval"]["AP"] for h in evals], "k--o", label="val AP (right axis)")
        ax2.set_ylabel("val AP")
        ax2.set_ylim(0, 100)
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
