"""Train VITA: `python -m vita_deploy.train --config tiny --data DIR --out RUN [--resume]`.

DIR is a YouTube-VIS folder: `train.json` + `train/JPEGImages/` (and optionally `valid.json` +
`valid/JPEGImages/` with annotations, for periodic evaluation), e.g. from `python -m vita_deploy.data.synthetic`.
Multi-GPU (or multi-process CPU with gloo): `torchrun --nproc_per_node N -m vita_deploy.train ...`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from vita_deploy.config import canonical_config_name, config_names
from vita_deploy.data.ytvis_json import YTVISFormatError
from vita_deploy.modeling.checkpoint import CheckpointError
from vita_deploy.training.trainer import Trainer, TrainConfig


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name not in ("data", "out")}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="YouTube-VIS folder with train.json and train/JPEGImages")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, loss_curve.png")
    p.add_argument("--config", default=defaults["config"], choices=config_names(), type=canonical_config_name)
    g = p.add_argument_group("schedule")
    g.add_argument("--iters", type=int, default=defaults["iters"])
    g.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="clips per process")
    g.add_argument("--num-frames", type=int, default=defaults["num_frames"], help="frames per clip (T)")
    g.add_argument("--sampling-frame-range", type=int, default=defaults["sampling_frame_range"])
    g.add_argument("--lr", type=float, default=defaults["lr"])
    g.add_argument("--backbone-lr-mult", type=float, default=defaults["backbone_lr_mult"],
                   help="backbone lr factor: 0.1 fine-tunes a pretrained backbone (official); 1.0 from scratch")
    g.add_argument("--warmup-iters", type=int, default=defaults["warmup_iters"])
    g.add_argument("--clip-grad", type=float, default=defaults["clip_grad"])
    g.add_argument("--num-points", type=int, default=defaults["num_points"], help="points per mask in losses")
    g = p.add_argument_group("run")
    g.add_argument("--eval-every", type=int, default=defaults["eval_every"], help="0 disables evaluation")
    g.add_argument("--eval-videos", type=int, default=defaults["eval_videos"], help="0 = whole valid split")
    g.add_argument("--ckpt-every", type=int, default=defaults["ckpt_every"])
    g.add_argument("--log-every", type=int, default=defaults["log_every"])
    g.add_argument("--workers", type=int, default=defaults["workers"])
    g.add_argument("--seed", type=int, default=defaults["seed"])
    g.add_argument("--device", default=defaults["device"])
    g.add_argument("--no-amp", action="store_true", help="disable fp16 autocast on CUDA")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from RUN/last.pth (or the given checkpoint)")
    a = p.parse_args(argv)
    cfg = TrainConfig(data=a.data, out=a.out, config=a.config, iters=a.iters, batch_size=a.batch_size,
                      num_frames=a.num_frames, sampling_frame_range=a.sampling_frame_range, lr=a.lr,
                      backbone_lr_mult=a.backbone_lr_mult, warmup_iters=a.warmup_iters, clip_grad=a.clip_grad,
                      num_points=a.num_points, eval_every=a.eval_every, eval_videos=a.eval_videos,
                      ckpt_every=a.ckpt_every, log_every=a.log_every, workers=a.workers, seed=a.seed,
                      device=a.device, amp=not a.no_amp)
    resume = None
    if a.resume == "auto":
        resume = str(Path(a.out) / "last.pth")
    elif a.resume:
        resume = a.resume
    return cfg, resume


def main(argv: list[str] | None = None) -> int:
    cfg, resume = parse_args(argv)
    try:
        trainer = Trainer(cfg)
        if resume:
            trainer.resume(resume)
            print(f"resumed from {resume} at iteration {trainer.iteration}")
        metrics = trainer.train()
    except (YTVISFormatError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if metrics:
        print("final val: " + "  ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
