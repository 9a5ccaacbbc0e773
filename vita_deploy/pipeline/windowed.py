"""Windowed (semi-online) VITA for live and endless video, with instance identities across windows.

VITA is offline: it reads every frame's queries before it makes a mask. Here the frame detector streams in
chunks as in `run_video`, and VITA runs on each window of W frames' queries; windows start every S = W - O frames
(O frames overlap). Each window's top-k (query, class) instances are linked to the running tracks
(`Tracker`): Hungarian matching (scipy `linear_sum_assignment`) on an affinity that is the cosine similarity of
VITA's clip-query embeddings (`sim_embed_clip` of the video queries, the embedding `loss_vita_sim` trains to tell
instances apart), averaged with the video mask IoU on the overlapping frames when O > 0; a pair must have the
same class and an affinity >= `threshold`, otherwise the instance starts a new track. A track's score is the
class probability x mask score of offline VITA (vita_spec.md section 3.6) pooled over its windows as it runs
(`Track.score`: the highest class probability, the mask score over all its frames); a track unseen for more
than `max_gap` windows ends.

Memory is O(W): the frame queries and mask features of at most W + one chunk of frames, each track's masks on
the frames the next window re-reads, and the source frames that wait for their masks when rendering. Every
frame's masks leave with the window that first covers it: one JSON line per window (`TrackWriter`) and a
renderer (`TrackSink`); the final YouTube-VIS results are assembled from that line file when the stream ends.
With W >= T there is one window and the output equals `run_video`'s exactly.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from vita_deploy.config import ModelConfig
from vita_deploy.errors import InputError
from vita_deploy.pipeline.inference import DetectorFn, VitaFn, eager_graphs, release_free_heap, select_topk
from vita_deploy.pipeline.postprocess import MaskMaker
from vita_deploy.pipeline.prefetch import FrameChunks
from vita_deploy.pipeline.preprocess import normalize_and_pad
from vita_deploy.pipeline.timing import StageTimer
from vita_deploy.pipeline.video_io import FrameReader

# frame_queries (T, fQ, C) -> class_logits (cQ, K+1), mask_embed (cQ, C), association embedding (cQ, E)
TrackVitaFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class WindowError(InputError):
    """A window/overlap/max-gap setting that cannot work; the message names the fix."""


@dataclass
class WindowConfig:
    """window W frames per VITA run; overlap O frames shared by consecutive windows (0 <= O < W); max_gap:
    windows a track may go unseen before it ends; threshold: the lowest affinity that continues a track;
    iou_weight: share of the overlap-frame mask IoU in the affinity when O > 0 (the rest is the cosine
    similarity); min_new_score: instances scoring below it do not start tracks (0: every top-k instance does,
    as offline)."""

    window: int
    overlap: int = 0
    max_gap: int = 2
    threshold: float = 0.5
    iou_weight: float = 0.5
    min_new_score: float = 0.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise WindowError(f"--window {self.window}: a window needs at least 1 frame", None,
                              "pass --window W with W >= 1 (e.g. 36)")
        if not 0 <= self.overlap < self.window:
            raise WindowError(f"--overlap {self.overlap} with --window {self.window}: the overlap must be at least 0 "
                              "and smaller than the window (windows start every W - O frames)", None,
                              f"pass --overlap between 0 and {self.window - 1} (e.g. {min(6, self.window - 1)})")
        if self.max_gap < 0:
            raise WindowError(f"--max-gap {self.max_gap} is negative", None, "pass --max-gap 0 or more")

    @property
    def stride(self) -> int:
        return self.window - self.overlap


def eager_track_graphs(model: torch.nn.Module, amp: bool = False) -> tuple[DetectorFn, TrackVitaFn]:
    """The eager model's detector and VITA head with clip-query embeddings (`VitaHead.forward_with_clip_embed`);
    amp: fp16 autocast, CUDA only (as `eager_graphs`)."""
    detector, _ = eager_graphs(model, amp=amp)

    def vita(frame_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(frame_queries.device.type, dtype=torch.float16, enabled=amp):
            logits, embed, cq = model.vita_head.forward_with_clip_embed(frame_queries)
        return logits.float(), embed.float(), cq.float()

    return detector, vita


def mask_embed_association(vita: VitaFn) -> TrackVitaFn:
    """A two-output VITA graph (an ONNX/TensorRT export: class_logits, mask_embed) as a TrackVitaFn that
    associates on the mask embeddings (the exports carry no clip-query embedding; README "Live video")."""
    def run(frame_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, embed = vita(frame_queries)
        return logits, embed, embed

    return run


def check_export_window(manifest: dict, window: int, path: str | Path | None = None) -> None:
    """Refuse a window longer than the T range an export's VITA graph (and its engine profile) was built for."""
    profile = manifest.get("graphs", {}).get("vita_head", {}).get("profiles", {}).get("frame_queries")
    if profile and window > int(profile["max"][0]):
        raise WindowError(f"--window {window} is longer than the {profile['max'][0]} frames the export's VITA graph "
                          "takes", path, f"pass --window {profile['max'][0]} or less, or re-export with "
                          f"`vita-deploy export --max-frames {window}` (and rebuild the engines)")


# ---- association -------------------------------------------------------------------------------------------------

@dataclass
class Track:
    """One identity: `label` fixed at birth; `embed` the unit mean of its windows' embeddings; `tail` its RLEs
    on the frames the next window re-reads (frame -> RLE); `score` its running score (see `score`)."""

    id: int
    label: int
    embed: torch.Tensor
    score_sum: float = 0.0  # sum over windows of class probability x mask score
    weighted_sum: float = 0.0  # the same, each weighted by the window's mask area
    area_sum: float = 0.0
    prob_max: float = 0.0
    numerator_sum: float = 0.0  # the mask score's sums (soft mask inside the hard mask, hard area) over windows
    first_score: float = 0.0
    windows: int = 0
    last_window: int = -1
    first_frame: int = 0
    last_frame: int = 0
    tail: dict[int, dict] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """The offline score (vita_spec.md section 3.6, class probability x mask score) pooled over the track's
        windows: the highest class probability a window gave it, times the mask score over all its windows'
        frames (soft mask inside the hard mask / hard area, summed over windows as offline sums over frames).
        With one window: that window's score, exactly as offline.

        Why not the plain mean of the windows' scores: VITA keeps returning a track's query in windows where the
        object is absent (not yet entered, left, occluded) with a low class probability and an empty mask, and
        averaging those in ranked objects seen in part of the video below false positives. On the benchmark's
        12 videos at W=36, O=6 the plain mean lost 7.0 AP to offline, a mask-area-weighted mean 2.2, this 1.3
        (README "Live video", `benchmarks/bench_windowed.py --score-ablation`)."""
        if self.windows == 1:
            return self.first_score
        return self.prob_max * self.numerator_sum / (self.area_sum + 1e-6)


def video_iou(a: list[dict], b: list[dict]) -> float | None:
    """Sum over frames of |a & b| / sum of |a | b| (ytvoseval's video IoU) of two RLE lists; None if both empty."""
    inter = union = 0.0
    for ra, rb in zip(a, b):
        both = float(mask_utils.area(mask_utils.merge([ra, rb], intersect=True)))
        inter += both
        union += float(mask_utils.area(ra)) + float(mask_utils.area(rb)) - both
    return inter / union if union > 0 else None


class Tracker:
    """Links each window's instances to running tracks (module docstring); bounded by the live tracks."""

    def __init__(self, cfg: WindowConfig) -> None:
        self.cfg = cfg
        self.active: dict[int, Track] = {}
        self.next_id = 0

    def affinity(self, track: Track, label: int, embed: torch.Tensor, overlap: dict[int, dict]) -> float:
        """Cosine similarity, averaged with the overlap-frame video IoU (iou_weight) when both have masks there;
        -inf across classes."""
        if track.label != label:
            return -math.inf
        cos = float(track.embed @ embed)
        frames = sorted(set(track.tail) & set(overlap))
        iou = video_iou([track.tail[f] for f in frames], [overlap[f] for f in frames]) if frames else None
        if iou is None or self.cfg.overlap == 0:
            return cos
        w = self.cfg.iou_weight
        return (1 - w) * cos + w * iou

    def update(self, window: int, labels: list[int], scores: list[float], embeds: torch.Tensor,
               overlaps: list[dict[int, dict]], areas: list[float] | None = None,
               probs: list[float] | None = None, numerators: list[float] | None = None) -> list[int | None]:
        """Match window `window`'s instances to live tracks; returns each instance's track id (None: dropped
        below min_new_score). embeds (k, E) unit vectors; overlaps[i]: instance i's RLEs on the frames the
        previous window also covered; areas[i]: its mask area in the window (score weight; default 1)."""
        areas = areas if areas is not None else [1.0] * len(labels)
        probs = probs if probs is not None else list(scores)
        numerators = numerators if numerators is not None else [s * a for s, a in zip(scores, areas)]
        tracks = list(self.active.values())
        k = len(labels)
        ids: list[int | None] = [None] * k
        if tracks and k:
            aff = np.array([[self.affinity(t, labels[i], embeds[i], overlaps[i]) for t in tracks] for i in range(k)])
            cost = np.where(np.isfinite(aff), -aff, 1e6)
            for i, j in zip(*linear_sum_assignment(cost)):
                if np.isfinite(aff[i, j]) and aff[i, j] >= self.cfg.threshold:
                    ids[i] = tracks[j].id
        for i in range(k):
            if ids[i] is None and scores[i] >= self.cfg.min_new_score:
                track = Track(self.next_id, labels[i], embeds[i].clone())
                self.active[track.id] = track
                ids[i] = track.id
                self.next_id += 1
            if ids[i] is None:
                continue
            track = self.active[ids[i]]
            if track.windows:
                track.embed = torch.nn.functional.normalize(track.embed + embeds[i], dim=0)
            if not track.windows:
                track.first_score = scores[i]
            track.score_sum += scores[i]
            track.weighted_sum += scores[i] * areas[i]
            track.area_sum += areas[i]
            track.prob_max = max(track.prob_max, probs[i])
            track.numerator_sum += numerators[i]
            track.windows += 1
            track.last_window = window
        return ids

    def expire(self, window: int, final: bool = False) -> list[Track]:
        """Remove and return the tracks unseen for more than max_gap windows (every track when `final`)."""
        done = [t for t in self.active.values() if final or window - t.last_window > self.cfg.max_gap]
        for t in done:
            del self.active[t.id]
        return done


# ---- outputs -----------------------------------------------------------------------------------------------------

@dataclass
class WindowOutput:
    """One finished window: frames [start, end) are new (first covered here); per instance (top-k order) its
    track id, label, class probability, window score, running track score and RLEs of the new frames."""

    index: int
    start: int
    end: int
    track_ids: list[int | None]
    labels: list[int]
    class_scores: list[float]
    window_scores: list[float]
    track_scores: list[float]
    rles: list[list[dict]]


class TrackSink(Protocol):
    """Takes every frame, in order, with the tracks' masks on it (`vita_deploy.pipeline.render.TrackRenderer`)."""

    def begin_tracks(self, height: int, width: int) -> None: ...

    def write_tracks(self, frame: np.ndarray, tracks: list[tuple[int, int, float, dict]]) -> None:
        """frame uint8 (H, W, 3) RGB; tracks: (track id, label, class probability, RLE) of each instance."""


class TrackWriter:
    OFFSETS_IN_MEMORY = 1024

    """Writes one JSON line per window as it finishes (flushed) to `jsonl` (or a hidden spool file beside `json`
    when no jsonl is wanted), and at `finish` the YouTube-VIS results: each track one instance over the whole video
    (null on frames without it), read back track by track from the line file (a byte-offset index per track), so
    nothing per frame is held in memory while the stream runs.

    A window line: {"window", "frames": [start, end), "tracks": [{"id", "label", "category_id", "score" (running),
    "window_score", "class_score", "segmentations": [one RLE per new frame]}]}."""

    OFFSETS_IN_MEMORY = 1024  # window offsets of a live track kept in memory before they go to the index file

    def __init__(self, json_path: str | Path | None, jsonl_path: str | Path | None = None, video_id: int = 1,
                 class_names: tuple[str, ...] = (), category_ids: list[int] | None = None) -> None:
        self.json_path = Path(json_path) if json_path else None
        self.video_id, self.class_names, self.category_ids = video_id, tuple(class_names), category_ids
        self.spool_is_output = jsonl_path is not None
        if jsonl_path is not None:
            self.lines_path = Path(jsonl_path)
            self.lines_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            folder = self.json_path.parent if self.json_path else Path(tempfile.gettempdir())
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".vita-windows.", suffix=".jsonl", dir=folder)
            os.close(fd)
            self.lines_path = Path(name)
        self._lines = open(self.lines_path, "w", encoding="utf-8")
        # finished tracks, one JSON line each (id, label, score, byte offsets of its window lines): on disk too
        fd, name = tempfile.mkstemp(prefix=".vita-tracks.", suffix=".jsonl", dir=self.lines_path.parent)
        os.close(fd)
        self._index_path = Path(name)
        self._index = open(self._index_path, "w", encoding="utf-8")
        self._offsets: dict[int, list[int]] = {}  # live tracks only, at most OFFSETS_IN_MEMORY each
        self.windows = self.tracks = 0

    def category(self, label: int) -> int:
        return self.category_ids[label] if self.category_ids is not None else label + 1

    def window(self, out: WindowOutput) -> None:
        entries = []
        for i, tid in enumerate(out.track_ids):
            if tid is None:
                continue
            label = out.labels[i]
            entries.append({"id": tid, "label": self.class_names[label] if self.class_names else label,
                            "category_id": self.category(label), "score": out.track_scores[i],
                            "window_score": out.window_scores[i], "class_score": out.class_scores[i],
                            "segmentations": out.rles[i]})
        offset = self._lines.tell()
        self._lines.write(json.dumps({"window": out.index, "frames": [out.start, out.end], "tracks": entries}) + "\n")
        self._lines.flush()
        for e in entries:
            offsets = self._offsets.setdefault(e["id"], [])
            offsets.append(offset)
            if len(offsets) >= self.OFFSETS_IN_MEMORY:  # a track that lives for hours: its index goes to disk too
                self._index.write(json.dumps({"id": e["id"], "offsets": offsets}) + "\n")
                offsets.clear()
        self.windows += 1

    def track_done(self, track: Track) -> None:
        offsets = self._offsets.pop(track.id, [])
        self._index.write(json.dumps({"id": track.id, "label": track.label, "score": track.score,
                                      "offsets": offsets}) + "\n")
        self.tracks += 1

    def finish(self, num_frames: int) -> Path | None:
        """Close the line file and write the results JSON atomically (None when no json path was given)."""
        self._lines.close()
        self._index.close()
        try:
            if self.json_path is None:
                return None
            from vita_deploy.files import atomic_write
            return atomic_write(self.json_path, lambda tmp: self._write_results(tmp, num_frames))
        finally:
            self._index_path.unlink(missing_ok=True)
            if not self.spool_is_output:
                self.lines_path.unlink(missing_ok=True)

    def _write_results(self, tmp: str, num_frames: int) -> None:
        parts: dict[int, list[int]] = {}
        tracks = []
        for line in self._index_path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            parts.setdefault(record["id"], []).extend(record["offsets"])
            if "label" in record:  # the track's last record (the others carry only offsets)
                tracks.append(record)
        for t in tracks:
            t["offsets"] = parts[t["id"]]
        tracks.sort(key=lambda t: t["id"])
        with open(tmp, "w", encoding="utf-8") as out, open(self.lines_path, "rb") as lines:
            out.write("[")
            for n, t in enumerate(tracks):
                segs: list[dict | None] = [None] * num_frames
                for offset in t["offsets"]:
                    lines.seek(offset)
                    window = json.loads(lines.readline())
                    start = window["frames"][0]
                    entry = next(e for e in window["tracks"] if e["id"] == t["id"])
                    for j, rle in enumerate(entry["segmentations"]):
                        if start + j < num_frames:
                            segs[start + j] = rle
                out.write((", " if n else "") + json.dumps({
                    "video_id": self.video_id, "score": t["score"], "category_id": self.category(t["label"]),
                    "segmentations": segs}))
            out.write("]")

    def abort(self) -> None:
        for f in (self._lines, self._index):
            f.close()
        self._index_path.unlink(missing_ok=True)
        if not self.spool_is_output:
            self.lines_path.unlink(missing_ok=True)


# ---- the pipeline ------------------------------------------------------------------------------------------------

@dataclass
class WindowedSummary:
    """What a windowed run did: frames processed, windows, tracks, frames dropped by the reader (policy late),
    per-window latency (read of the window's oldest new frame -> its masks written) in seconds, mean per-frame
    latency, sustained fps (frames / wall time from the first read to the last write), stage timings."""

    frames: int = 0
    windows: int = 0
    tracks: int = 0
    dropped: int = 0
    interrupted: bool = False
    height: int = 0
    width: int = 0
    latency_p50: float = 0.0
    latency_p95: float = 0.0
    latency_max: float = 0.0
    latency_mean_frame: float = 0.0
    fps: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


class _Buffer:
    """Frame queries (fQ, C) and mask features (C, h4, w4) of frames [base, end), one entry per frame."""

    def __init__(self) -> None:
        self.base = 0
        self.fq: deque[torch.Tensor] = deque()
        self.mf: deque[torch.Tensor] = deque()

    @property
    def end(self) -> int:
        return self.base + len(self.fq)

    def slice(self, which: deque, a: int, b: int) -> list:
        return [which[i - self.base] for i in range(a, b)]

    def drop_before(self, frame: int) -> None:
        while self.base < frame and self.fq:
            self.fq.popleft()
            self.mf.popleft()
            self.base += 1


@torch.inference_mode()
def run_windowed(
    frames: Iterable[np.ndarray],
    detector: DetectorFn,
    vita: TrackVitaFn,
    cfg: ModelConfig,
    wcfg: WindowConfig,
    *,
    writer: TrackWriter | None = None,
    sink: TrackSink | None = None,
    device: torch.device | str = "cpu",
    drop: str = "wait",
    stop: threading.Event | None = None,
    num_frames: int | None = None,
    progress: bool = False,
    on_window: Callable[[WindowOutput], None] | None = None,
) -> WindowedSummary:
    """Windowed VITA over a stream of uint8 (H, W, 3) RGB frames (module docstring).

    Frames are read on their own thread (`FrameReader`: drop "wait" blocks the source when the pipeline is
    behind, "late" drops the oldest waiting frame), resized in another (`FrameChunks`), and the detector runs in
    chunks of min(model chunk, W - O) frames. When `stop` is set (SIGINT) reading ends, the frames already read
    go through, the last of them form a last window, every output is flushed and the summary says `interrupted`.
    The caller calls `writer.finish`. Output equals `run_video`'s exactly when W >= T and W - O >= the model's
    chunk (the detector then sees the same batches; smaller batches can differ in the last float bits).
    """
    device = torch.device(device)
    inp, inf = cfg.input, cfg.inference
    w, stride = wcfg.window, wcfg.stride
    timer = StageTimer(device)
    folded: dict[str, float] = {}  # stage totals of past timers: a CUDA timer keeps two events per stage call
    tracker = Tracker(wcfg)
    summary = WindowedSummary()
    reader = FrameReader(frames, policy=drop, capacity=max(2 * inf.chunk_size, 32), stop=stop)
    # the detector's batch: the model's chunk, at most one stride, so a window never waits for frames past its end
    chunks = FrameChunks(reader, min(inf.chunk_size, stride), inp, device, background=True,
                         keep_frames=sink is not None)
    buf = _Buffer()
    read_times: deque[float] = deque()  # of frames [emitted, buf.end)
    waiting: deque[np.ndarray] = deque()  # source frames [emitted, buf.end) for the sink
    latencies: deque[float] = deque(maxlen=10000)
    state = {"emitted": 0, "window": 0, "next_start": 0, "maker": None, "frame_latency_sum": 0.0}
    first_read: float | None = None
    last_write = time.perf_counter()
    bar = tqdm(total=num_frames, desc="windowed", unit="frame", disable=not progress)

    def fold_timer() -> None:
        nonlocal timer
        for stage, seconds in timer.totals().items():
            folded[stage] = folded.get(stage, 0.0) + seconds
        timer = StageTimer(device)

    def run_window(a: int, b: int) -> None:
        nonlocal last_write
        emitted = state["emitted"]
        with timer("vita"):
            logits, mask_embed, assoc = vita(torch.stack(buf.slice(buf.fq, a, b)))
        scores, labels, query_idx = select_topk(logits, inf.topk)
        embed = mask_embed[query_idx].float().contiguous()
        k = len(scores)
        numerator = torch.zeros(k, device=device)
        denominator = torch.zeros(k, device=device)
        rles: list[list[dict]] = [[] for _ in range(k)]
        step = inf.interpolate_chunk_size
        with timer("postprocess"):
            for s in range(a, b, step):  # the same chunks of frames as run_video (identical sums for W >= T)
                r = state["maker"](embed, torch.stack(buf.slice(buf.mf, s, min(s + step, b))))
                numerator += r.numerator
                denominator += r.denominator
                for q in range(k):
                    rles[q].extend(r.rles[q])
            window_scores = (scores * (numerator / (denominator + 1e-6))).tolist()
        with timer("associate"):
            unit = torch.nn.functional.normalize(assoc[query_idx].float(), dim=1).cpu()
            overlaps = [{f: rles[q][f - a] for f in range(a, emitted)} for q in range(k)]
            label_list = labels.tolist()
            ids = tracker.update(state["window"], label_list, window_scores, unit, overlaps, denominator.tolist(),
                                 scores.tolist(), numerator.tolist())
            keep_from = min(b, state["next_start"] + stride) if b - a == w else b  # what the next window re-reads
            for q, tid in enumerate(ids):
                if tid is not None:
                    t = tracker.active[tid]
                    t.tail = {f: rles[q][f - a] for f in range(keep_from, b)}
                    if t.windows == 1:
                        t.first_frame = max(a, emitted)
                    t.last_frame = b - 1
        out = WindowOutput(state["window"], emitted, b, ids, label_list, scores.tolist(), window_scores,
                           [tracker.active[t].score if t is not None else 0.0 for t in ids],
                           [r[emitted - a:] for r in rles])
        with timer("write"):
            if writer is not None:
                writer.window(out)
            if on_window is not None:
                on_window(out)
            if sink is not None:
                for j in range(b - emitted):
                    sink.write_tracks(waiting.popleft(), [(tid, label_list[q], out.class_scores[q], out.rles[q][j])
                                                          for q, tid in enumerate(ids) if tid is not None])
            for t in tracker.expire(state["window"]):
                if writer is not None:
                    writer.track_done(t)
        now = time.perf_counter()
        last_write = now
        times = [read_times.popleft() for _ in range(b - emitted)]
        if times:
            latencies.append(now - times[0])
            state["frame_latency_sum"] += sum(now - t for t in times)
        state["emitted"] = b
        state["window"] += 1
        if state["window"] % 64 == 0:
            fold_timer()

    try:
        for chunk in chunks:
            n = chunk.images.shape[0]
            if first_read is None:
                summary.height, summary.width = chunk.orig
                if sink is not None:
                    sink.begin_tracks(*chunk.orig)
            for _ in range(n):
                read_times.append(reader.read_times.popleft())
            if first_read is None:
                first_read = read_times[0]
            if sink is not None:
                waiting.extend(chunk.frames)
            with timer("preprocess"):
                images = normalize_and_pad(chunk.images.to(device, non_blocking=True), inp)
            with timer("detector"):
                fq, mf = detector(images)
            if state["maker"] is None:
                state["maker"] = MaskMaker(tuple(mf.shape[-2:]), tuple(images.shape[-2:]), chunk.size, chunk.orig,
                                           device)
            buf.fq.extend(fq.unbind(0))
            buf.mf.extend(mf.unbind(0))
            bar.update(n)
            while buf.end >= state["next_start"] + w:
                a = state["next_start"]
                run_window(a, a + w)
                state["next_start"] = a + stride
                # keep what the next window reads, and the last W - 1 frames for a full-length tail window
                buf.drop_before(min(state["next_start"], buf.end - w + 1))
            release_free_heap()
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.interrupted = summary.interrupted or (stop is not None and stop.is_set())
        reader.stop()
        chunks.close()
        bar.close()
    total = buf.end
    if state["emitted"] < total:  # the stream's tail: a last window ending at its last frame
        a = max(0, total - w)
        if a < buf.base:  # cannot happen (the buffer keeps the last W frames), guarded for clarity
            a = buf.base
        run_window(a, total)
    for t in tracker.expire(state["window"], final=True):
        if writer is not None:
            writer.track_done(t)
    summary.frames = total
    summary.windows = state["window"]
    summary.tracks = tracker.next_id
    summary.dropped = reader.dropped
    if latencies:
        lat = np.array(latencies)
        summary.latency_p50, summary.latency_p95 = float(np.percentile(lat, 50)), float(np.percentile(lat, 95))
        summary.latency_max = float(lat.max())
    if total:
        summary.latency_mean_frame = state["frame_latency_sum"] / total
    if first_read is not None and last_write > first_read:
        summary.fps = total / (last_write - first_read)
    fold_timer()
    folded.update(decode=chunks.stats.wait, decode_thread=chunks.stats.decode, resize_thread=chunks.stats.resize)
    summary.timings = folded
    return summary
