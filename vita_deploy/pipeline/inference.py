"""Whole-video inference (vita_spec.md section 3), shared by every backend.

frames -> resize/normalise/pad -> frame detector in chunks (mask features wait in a `FeatureStore`, or are
recomputed in a second pass over the video: README "Keep vs recompute") -> VITA once over all frame queries ->
top-k (query, class) pairs -> masks in chunks of frames, mask score, upsampling -> one RLE per frame (and, with a
`FrameSink`, each frame with its masks to a renderer). The graphs are passed in as callables, so the same code runs
the eager model, ONNX Runtime sessions or TensorRT engines.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from vita_deploy.config import ModelConfig
from vita_deploy.pipeline.feature_store import FeatureStore, QueryStore
from vita_deploy.pipeline.postprocess import ChunkResult, MaskMaker
from vita_deploy.pipeline.prefetch import FrameChunks, is_rereadable
from vita_deploy.pipeline.preprocess import normalize_and_pad
from vita_deploy.pipeline.timing import StageTimer
from vita_deploy.pipeline.video_io import VideoReadError

# images (N, 3, Hp, Wp) -> frame_queries (N, fQ, C), mask_features (N, C, Hp/4, Wp/4)
DetectorFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# frame_queries (T, fQ, C) -> class_logits (cQ, K+1), mask_embed (cQ, C)
VitaFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# images (N, 3, Hp, Wp) -> mask_features (N, C, Hp/4, Wp/4): the detector without its frame decoder
MaskFeaturesFn = Callable[[torch.Tensor], torch.Tensor]


class FrameSink(Protocol):
    """Takes every frame of the video with its instances' masks, in frame order (`vita_deploy.pipeline.render.VideoRenderer`
    draws them into an mp4). `begin` comes right after VITA with what is known then: the top-k class
    probabilities and labels (the final scores also need the mask score, a sum over every frame)."""

    def begin(self, class_scores: list[float], labels: list[int], height: int, width: int) -> None: ...

    def write(self, frame: np.ndarray, rles: list[dict]) -> None:
        """frame uint8 (H, W, 3) RGB; rles: this frame's RLE of each of the k instances."""


@dataclass
class VideoPrediction:
    """Top-k instances of one video: scores (k,) = class probability x mask score, contiguous labels (k,), and
    per instance one compressed RLE per frame at the original resolution (k lists of T dicts); class_scores
    (k,) the class probabilities alone."""

    scores: list[float]
    labels: list[int]
    segmentations: list[list[dict]]
    height: int
    width: int
    num_frames: int
    class_scores: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    features_mode: str = "keep"  # how the mask features were had: "keep" or "recompute"
    spilled_mb: float = 0.0  # mask features the store wrote to its spill folder (0 unless one was given)

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


FEATURE_MODES = ("auto", "keep", "recompute")
def auto_host_budget_mb() -> float:
    """Host memory auto mode lets kept mask features take when no budget is given: a quarter of the machine's
    RAM (at least 1 GiB), so short and medium videos keep their features and long ones recompute them."""
    try:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        ram_mb = 4096.0
    return max(1024.0, ram_mb / 4)


def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on other C libraries."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None


_MALLOC_TRIM = _libc_malloc_trim()
_TRIM_EVERY_S = 1.0
_last_trim = 0.0


def release_free_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim(0)`, at most once a second; a no-op on
    other C libraries).

    Why: frames, resized chunks and mask windows are megabyte buffers allocated and freed in three threads (reader,
    graphs, post-processing); glibc serves them from per-thread arenas once its dynamic mmap threshold has grown,
    and their freed pages stay resident in ever new places, so without this the peak RSS of a long 1080p video
    creeps up with its length (README "Long and high-resolution videos", measured there)."""
    global _last_trim
    now = time.monotonic()
    if _MALLOC_TRIM is not None and now - _last_trim >= _TRIM_EVERY_S:
        _last_trim = now
        _MALLOC_TRIM(0)


class FeaturePolicyError(ValueError):
    """A --features choice that cannot work for this video or backend; the message names the fix."""


def _cast_like_store(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The values a FeatureStore of `dtype` hands back (so recomputed features equal kept ones exactly)."""
    return features.detach().to(dtype).float()


class _PostProcessor:
    """Runs MaskMaker chunks in order, in a worker thread (overlap) or inline; at most `depth` in flight."""

    def __init__(self, maker: MaskMaker, embed: torch.Tensor, timer: StageTimer, background: bool,
                 device: torch.device, depth: int = 2) -> None:
        self.maker, self.embed, self.timer, self.depth = maker, embed, timer, depth
        self.results: list[ChunkResult] = []
        # called in the caller's thread with each finished chunk, in frame order (the same-pass renderer)
        self.on_result: Callable[[ChunkResult], None] | None = None
        self._pending: list[Future] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vita-post") if background else None
        self._stream = torch.cuda.Stream(device) if background and device.type == "cuda" else None

    def _run(self, features: torch.Tensor, ready: torch.cuda.Event | None) -> ChunkResult:
        if self._stream is None:
            with self.timer("postprocess"):
                return self.maker(self.embed, features)
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            with self.timer("postprocess"):
                return self.maker(self.embed, features)

    def _collect(self, result: ChunkResult) -> None:
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def submit(self, features: torch.Tensor) -> None:
        if self._pool is None:
            self._collect(self._run(features, None))
            return
        ready = None
        if self._stream is not None:
            ready = torch.cuda.Event()
            ready.record()
            features.record_stream(self._stream)
            self.embed.record_stream(self._stream)
        self._pending.append(self._pool.submit(torch.inference_mode()(self._run), features, ready))
        while len(self._pending) > self.depth:
            self._collect(self._pending.pop(0).result())

    def finish(self) -> list[ChunkResult]:
        try:
            while self._pending:
                self._collect(self._pending.pop(0).result())
        finally:
            self.close()
        if self._stream is not None:
            torch.cuda.current_stream().wait_stream(self._stream)
        return self.results

    def close(self) -> None:
        if self._pool is not None:
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None


@torch.inference_mode()
def run_video(
    frames: Iterable[np.ndarray],
    detector: DetectorFn,
    vita: VitaFn,
    cfg: ModelConfig,
    *,
    mask_features: MaskFeaturesFn | None = None,
    features: str = "auto",
    device: torch.device | str = "cpu",
    num_frames: int | None = None,
    device_budget_mb: float = 1024.0,
    host_budget_mb: float | None = None,
    feature_dtype: torch.dtype = torch.float32,
    spill_dir: str | None = None,
    query_budget_mb: float = 256.0,
    overlap: bool = True,
    sink: FrameSink | None = None,
    progress: bool = False,
) -> VideoPrediction:
    """Run VITA on one video.

    Args:
        frames: uint8 (H, W, 3) RGB frames, all the same size, streamed (e.g. `vita_deploy.pipeline.video_io.open_video`).
        detector, vita: the two graphs (see DetectorFn / VitaFn), taking and returning tensors on `device`.
        mask_features: the mask-feature graph (MaskFeaturesFn), needed by recompute mode.
        features: where the mask features come from after VITA has run (README "Keep vs recompute"):
            "keep" stores them (`FeatureStore`: device up to device_budget_mb, then host memory up to
            host_budget_mb, then disk only in `spill_dir`); "recompute" keeps only frame queries and re-reads
            the video in a second pass, recomputing mask features chunk by chunk (needs `mask_features` and
            frames that can be read twice); "auto" keeps while the predicted size fits the device + host budget
            (`auto_host_budget_mb()`, a quarter of the RAM, when host_budget_mb is None) and recomputes otherwise.
        num_frames: the video length if known (progress bar, auto's prediction).
        query_budget_mb: frame queries kept at full precision; beyond it they wait in host memory in fp16.
        overlap: decode in a background thread and post-process chunk i while chunk i+1 is computed (same
            results as overlap=False, which runs every stage inline).
        sink: gets every frame with its masks (e.g. a `VideoRenderer`); recompute mode feeds it in its second
            pass, keep mode in a second read after the masks are made, so it needs a video that can be read
            twice in either mode. Frames wait for their masks in a bounded queue (a few chunks).
    Returns:
        VideoPrediction with `timings` in seconds per stage: decode, preprocess, detector, vita, postprocess
        (and mask_features in recompute mode; render, wall time, with a sink). With overlap, "decode" is the time
        spent waiting for the background reader (its busy time: decode_thread, resize_thread) and post-processing
        runs in a worker thread (in recompute mode concurrently with the mask-feature graph).
    """
    if features not in FEATURE_MODES:
        raise FeaturePolicyError(f"features must be one of {', '.join(FEATURE_MODES)}, not {features!r}")
    device = torch.device(device)
    inp, inf = cfg.input, cfg.inference
    timer = StageTimer(device)
    rereadable = is_rereadable(frames)
    can_recompute = mask_features is not None and rereadable
    if features == "recompute" and mask_features is None:
        raise FeaturePolicyError("features=recompute needs the mask-feature graph (mask_features=...): pass it, "
                                 "re-export with mask_features.onnx, or use --features keep")
    if features == "recompute" and not rereadable:
        raise FeaturePolicyError("--features recompute reads the video twice, but this input is a stream that "
                                 "cannot be read again (stdin, a pipe or an iterator): save it to an mp4 or a frame "
                                 "folder first, or use --features keep")
    if sink is not None and not rereadable:
        raise FeaturePolicyError("rendering reads the video a second time (the masks exist only after VITA has "
                                 "seen every frame), but this input is a stream that cannot be read again (stdin, a "
                                 "pipe or an iterator): save it to an mp4 or a frame folder first, or leave out --out")
    host_budget = host_budget_mb if host_budget_mb is not None else (
        auto_host_budget_mb() if features == "auto" and can_recompute else None)
    mode = features
    queries = QueryStore(device, query_budget_mb)
    orig = size = padded = None
    bar = tqdm(total=num_frames, desc="frame detector", unit="frame", disable=not progress)
    reader = FrameChunks(frames, inf.chunk_size, inp, device, background=overlap)
    with FeatureStore(device, device_budget_mb, host_budget, spill_dir, feature_dtype) as store, \
            contextlib.closing(reader):
        for chunk in reader:
            if orig is None:
                orig, size = chunk.orig, chunk.size
            with timer("preprocess"):
                images = normalize_and_pad(chunk.images.to(device, non_blocking=True), inp)
            with timer("detector"):
                fq, mf = detector(images)
            queries.append(fq)
            if padded is None:
                padded = tuple(images.shape[-2:])
                if mode == "auto":
                    per_frame = mf[0].numel() * torch.empty((), dtype=feature_dtype).element_size()
                    predicted = (num_frames or 0) * per_frame
                    mode = "recompute" if can_recompute and not store.fits(predicted) else "keep"
            if mode == "keep" and features == "auto" and can_recompute and not store.fits_more(mf):
                mode = "recompute"  # the length estimate was short: drop the kept features, recompute them all
                store.clear()
            if mode == "keep":
                store.append(mf)
            bar.update(chunk.images.shape[0])
            release_free_heap()
        bar.close()
        _add_read_times(timer, reader)
        if orig is None:
            raise ValueError("the video has no frames")
        num_frames = reader.stats.frames
        disk_mb = store.bytes_disk / 2**20
        # Keep mode: VITA and the masks of every kept frame follow the detector bar; on long videos that takes
        # seconds, so it has a bar of its own (shown from the start, while VITA runs). Recompute has its pass's.
        stage = tqdm(total=num_frames, desc="VITA + masks", unit="frame", disable=not progress or mode != "keep")
        with timer("vita"):
            class_logits, mask_embed = vita(queries.all())  # (cQ, K+1), (cQ, C)
        queries.clear()
        scores, labels, query_idx = select_topk(class_logits, inf.topk)
        class_scores = scores.tolist()
        if sink is not None:
            sink.begin(class_scores, labels.tolist(), orig[0], orig[1])
        embed = mask_embed[query_idx].float().contiguous()  # (k, C)
        maker = MaskMaker(tuple(mf.shape[-2:]), padded, size, orig, device)
        post = _PostProcessor(maker, embed, timer, overlap, device)
        step = inf.interpolate_chunk_size
        try:
            if mode == "keep":
                for start in range(0, num_frames, step):
                    post.submit(store.get(start, min(start + step, num_frames)))
                    stage.update(min(step, num_frames - start))
            else:
                _recompute(frames, mask_features, cfg, device, feature_dtype, num_frames, post, timer, overlap,
                           progress, sink)
            results = post.finish()
        finally:
            post.close()
            stage.close()
    numerator = torch.zeros(len(scores), device=device)
    denominator = torch.zeros(len(scores), device=device)
    segmentations: list[list[dict]] = [[] for _ in range(len(scores))]
    for r in results:  # in frame order, the same sums in both modes
        numerator += r.numerator
        denominator += r.denominator
        for q, rles in enumerate(r.rles):
            segmentations[q].extend(rles)
    scores = scores * (numerator / (denominator + 1e-6))
    if sink is not None and mode == "keep":
        _render_pass(frames, segmentations, orig, num_frames, sink, timer, progress)
    return VideoPrediction(scores.tolist(), labels.tolist(), segmentations, orig[0], orig[1], num_frames,
                           class_scores=class_scores, timings=timer.totals(), features_mode=mode,
                           spilled_mb=disk_mb)


def _add_read_times(timer: StageTimer, reader: FrameChunks) -> None:
    """Inline reading: decode and resize are stages of their own. Background reading: "decode" is the time the
    pipeline waited for the reader; the thread's busy time goes to decode_thread / resize_thread."""
    if reader.background:
        timer.add("decode", reader.stats.wait)
        timer.add("decode_thread", reader.stats.decode)
        timer.add("resize_thread", reader.stats.resize)
    else:
        timer.add("decode", reader.stats.decode)
        timer.add("preprocess", reader.stats.resize)


def _render_pass(frames: Iterable[np.ndarray], segmentations: list[list[dict]], orig: tuple[int, int],
                 num_frames: int, sink: FrameSink, timer: StageTimer, progress: bool) -> None:
    """Keep mode's sink: read the video again and hand over each frame with its instances' RLEs (the re-read
    counts as "render" time)."""
    start = time.perf_counter()
    seen = 0
    for t, frame in enumerate(tqdm(frames, total=num_frames, desc="render", unit="frame", disable=not progress)):
        if t >= num_frames or getattr(frame, "shape", (0, 0))[:2] != tuple(orig):
            break
        sink.write(frame, [segs[t] for segs in segmentations])
        seen += 1
    timer.add("render", time.perf_counter() - start)  # host work: wall time, also on CUDA
    if seen != num_frames:
        raise VideoReadError(f"the video read differently the second time (frame {seen} of {num_frames} is missing "
                             "or has another size): rendering needs a source that reads the same twice")


def _recompute(frames: Iterable[np.ndarray], mask_features: MaskFeaturesFn, cfg: ModelConfig,
               device: torch.device, feature_dtype: torch.dtype, num_frames: int, post: _PostProcessor,
               timer: StageTimer, overlap: bool, progress: bool, sink: FrameSink | None = None) -> None:
    """Pass 2: decode again, recompute mask features in the detector's chunks, post-process in the same frame
    ranges as keep mode (so the results are identical); with a sink, each frame goes to it as soon as its
    chunk's masks are made (the frames wait in `waiting`: at most the reader's, the buffer's and the
    post-processor's few chunks)."""
    inp, inf = cfg.input, cfg.inference
    step = inf.interpolate_chunk_size
    buffer: list[torch.Tensor] = []
    buffered = 0
    seen = 0
    waiting: deque[np.ndarray] = deque()
    if sink is not None:
        def render(result: ChunkResult) -> None:
            start = time.perf_counter()
            for j in range(len(result.rles[0])):
                sink.write(waiting.popleft(), [rles[j] for rles in result.rles])
            timer.add("render", time.perf_counter() - start)  # host work: wall time, also on CUDA
        post.on_result = render
    reader = FrameChunks(frames, inf.chunk_size, inp, device, background=overlap, keep_frames=sink is not None)
    desc = "mask features + render" if sink is not None else "mask features"
    bar = tqdm(total=num_frames, desc=desc, unit="frame", disable=not progress)
    with contextlib.closing(reader):
        for chunk in reader:
            if sink is not None:
                waiting.extend(chunk.frames)
            with timer("preprocess"):
                images = normalize_and_pad(chunk.images.to(device, non_blocking=True), inp)
            with timer("mask_features"):
                buffer.append(_cast_like_store(mask_features(images), feature_dtype))
            buffered += images.shape[0]
            seen += images.shape[0]
            if seen > num_frames:
                break
            while buffered >= step:
                merged = torch.cat(buffer) if len(buffer) > 1 else buffer[0]
                post.submit(merged[:step].contiguous())
                rest = merged[step:]
                buffer, buffered = ([rest] if rest.shape[0] else []), rest.shape[0]
            bar.update(images.shape[0])
            release_free_heap()
    bar.close()
    _add_read_times(timer, reader)
    if seen != num_frames:
        raise VideoReadError(f"the video gave {num_frames} frames on the first read and {seen} on the second: "
                             "recompute mode needs a source that reads the same twice (use --features keep)")
    if buffered:
        post.submit(torch.cat(buffer).contiguous())


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


def eager_mask_features(model: torch.nn.Module, amp: bool = False) -> MaskFeaturesFn:
    """The eager model's mask-feature graph (`FrameDetector.mask_features`) as a MaskFeaturesFn; same amp rule
    as `eager_graphs` (fp16 autocast on CUDA only)."""
    def mask_features(images: torch.Tensor) -> torch.Tensor:
        if amp and images.device.type != "cuda":
            raise ValueError(f"fp16 autocast (amp) runs on CUDA only; these inputs are on {images.device.type}")
        with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
            return model.frame_detector.mask_features(images).float()

    return mask_features
