"""Whole-video inference (vita_spec.md section 3), shared by every backend.

frames -> resize/normalise/pad -> frame detector in chunks (memory does not grow with video length in this
stage; mask features wait in a device/host/disk `FeatureStore`) -> VITA once over all frame queries ->
top-k (query, class) pairs -> masks in chunks of frames, mask score, upsampling -> one RLE per frame. The two graphs are passed in as callables, so the same code runs the
eager model, ONNX Runtime sessions or TensorRT engines.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from tqdm import tqdm

from vita_deploy.config import ModelConfig
from vita_deploy.feature_store import FeatureStore
from vita_deploy.preprocess import frames_to_tensor, normalize_and_pad, resize_frame, shortest_edge_size
from vita_deploy.timing import StageTimer

# images (N, 3, Hp, Wp) -> frame_queries (N, fQ, C), mask_features (N, C, Hp/4, Wp/4)
DetectorFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# frame_queries (T, fQ, C) -> class_logits (cQ, K+1), mask_embed (cQ, C)
VitaFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]



@dataclass
class VideoPrediction:
    """Top-k instances of one video: scores (k,), contiguous labels (k,), and per instance one compressed RLE
    per frame at the original resolution (k lists of T dicts)."""

    scores: list[float]
    labels: list[int]
    segmentations: list[list[dict]]
    height: int
    width: int
    num_frames: int
    timings: dict[str, float] = field(default_factory=dict)

    def to_ytvis(self, video_id: int, category_ids: list[int] | None = None) -> list[dict]:
        """YouTube-VIS result dicts; contiguous labels map to dataset ids (default: label + 1)."""
        results = []
        for score, label, segs in zip(self.scores, self.labels, self.segmentations):
            cat = category_ids[label] if category_ids is not None else label + 1
            results.append({"video_id": video_id, "score": float(score), "category_id": int(cat),
                            "segmentations": segs})
        return results


def encode_masks(masks: np.ndarray) -> list[dict]:
    """bool (n, H, W) -> n compressed RLEs with utf-8 counts (an empty mask still gets its RLE)."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles


def chunks(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def select_topk(class_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """class_logits (cQ, K+1) -> scores (k,), labels (k,), query indices (k,) over all (query, class) pairs.

    Softmax over K+1, drop no-object, flatten, top-k: one query may be kept with several classes.
    """
    probs = class_logits.float().softmax(-1)[:, :-1]  # (cQ, K)
    num_classes = probs.shape[1]
    scores, flat = probs.flatten().topk(min(k, probs.numel()))
    return scores, flat % num_classes, torch.div(flat, num_classes, rounding_mode="floor")


def _timed_frames(frames: Iterable[np.ndarray], timer: StageTimer) -> Iterator[np.ndarray]:
    """Yield frames, charging the time spent producing them (decoding) to the "decode" stage."""
    it = iter(frames)
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            return
        timer.add("decode", time.perf_counter() - t0)
        yield frame


@torch.inference_mode()
def run_video(
    frames: Iterable[np.ndarray],
    detector: DetectorFn,
    vita: VitaFn,
    cfg: ModelConfig,
    *,
    device: torch.device | str = "cpu",
    num_frames: int | None = None,
    device_budget_mb: float = 1024.0,
    host_budget_mb: float | None = None,
    feature_dtype: torch.dtype = torch.float32,
    spill_dir: str | None = None,
    progress: bool = False,
) -> VideoPrediction:
    """Run VITA on one video.

    Args:
        frames: uint8 (H, W, 3) RGB frames, all the same size, streamed (e.g. `vita_deploy.video_io.open_video`).
        detector, vita: the two graphs (see DetectorFn / VitaFn), taking and returning tensors on `device`.
        num_frames: the video length if known (progress bar only).
        device_budget_mb, host_budget_mb, feature_dtype, spill_dir: where mask features wait for VITA
            (`FeatureStore`: device up to its budget, then host memory, then a file on disk).
    Returns:
        VideoPrediction with `timings` in seconds per stage: decode, preprocess, detector, vita, postprocess.
    """
    device = torch.device(device)
    inp, inf = cfg.input, cfg.inference
    timer = StageTimer(device)
    frame_queries = []
    size = orig = None
    bar = tqdm(total=num_frames, desc="frame detector", unit="frame", disable=not progress)
    with FeatureStore(device, device_budget_mb, host_budget_mb, spill_dir, feature_dtype) as store:
        for batch in chunks(_timed_frames(frames, timer), inf.chunk_size):
            if orig is None:
                orig = batch[0].shape[:2]
                size = shortest_edge_size(*orig, inp.min_size_test, inp.max_size_test)
            if any(f.shape[:2] != orig for f in batch):
                raise ValueError(f"all frames of a video must have the same size; expected {orig}")
            with timer("preprocess"):
                images = normalize_and_pad(frames_to_tensor([resize_frame(f, size) for f in batch]).to(device), inp)
            with timer("detector"):
                fq, mf = detector(images)
                frame_queries.append(fq)
                store.append(mf)
            bar.update(len(batch))
        bar.close()
        if orig is None:
            raise ValueError("the video has no frames")
        padded = tuple(images.shape[-2:])
        num_frames = store.num_frames

        with timer("vita"):
            class_logits, mask_embed = vita(torch.cat(frame_queries))  # (cQ, K+1), (cQ, C)
        with timer("postprocess"):
            scores, labels, query_idx = select_topk(class_logits, inf.topk)
            embed = mask_embed[query_idx].float()  # (k, C)
            k = len(scores)
            numerator = torch.zeros(k, device=device)
            denominator = torch.zeros(k, device=device)
            segmentations: list[list[dict]] = [[] for _ in range(k)]
            for start in range(0, num_frames, inf.interpolate_chunk_size):
                mf = store.get(start, min(start + inf.interpolate_chunk_size, num_frames))
                logits = torch.einsum("qc,tchw->qthw", embed, mf)
                logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
                logits = logits[:, :, :size[0], :size[1]]  # crop the padding: (k, t, h, w)
                soft = logits.sigmoid()
                hard = soft > 0.5
                numerator += (soft * hard).flatten(1).sum(1)
                denominator += hard.flatten(1).sum(1)
                masks = F.interpolate(logits, size=orig, mode="bilinear", align_corners=False) > 0  # (k, t, H, W)
                masks_np = masks.cpu().numpy()
                for q in range(k):
                    segmentations[q].extend(encode_masks(masks_np[q]))
            scores = scores * (numerator / (denominator + 1e-6))
            scores_list, labels_list = scores.tolist(), labels.tolist()
    return VideoPrediction(scores_list, labels_list, segmentations, orig[0], orig[1], num_frames, timer.totals())


def eager_graphs(model: torch.nn.Module, amp: bool = False) -> tuple[DetectorFn, VitaFn]:
    """The eager PyTorch model as the two graph callables (fp16 autocast on CUDA when amp=True).

    amp=True on another device raises instead of running fp32 silently: autocast is used on CUDA only.
    """
    def autocast(x: torch.Tensor):
        if amp and x.device.type != "cuda":
            raise ValueError(f"fp16 autocast (amp) runs on CUDA only; these inputs are on {x.device.type}, where the "
                             "model would run in fp32: drop amp or use a CUDA device")
        return torch.autocast(x.device.type, dtype=torch.float16, enabled=amp)

    def detector(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(images):
            fq, mf = model.frame_detector(images)
        return fq.float(), mf.float()

    def vita(frame_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(frame_queries):
            logits, embed = model.vita_head(frame_queries)
        return logits.float(), embed.float()

    return detector, vita
