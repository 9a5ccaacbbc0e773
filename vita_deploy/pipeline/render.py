"""Render predictions onto the video: blended masks with per-instance colours, contours, class names and class
probabilities, and a legend; written as mp4 at the source frame rate (OpenCV, headless build).

`VideoRenderer` is the `FrameSink` that `run_video(..., sink=...)` feeds: in recompute mode during the second
pass over the video, in keep mode in a second read after the masks are made."""
from __future__ import annotations

import colorsys
import os
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from vita_deploy.errors import InputError
from vita_deploy.files import publish, temp_file_for


def instance_colors(n: int) -> list[tuple[int, int, int]]:
    """n well-separated RGB colours (golden-ratio hues)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((0.61803 * i) % 1.0, 0.75, 1.0)) for i in range(n)]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of a bool (H, W) mask's True pixels, None when it has none."""
    rows = np.flatnonzero(mask.any(1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def draw_frame(frame: np.ndarray, masks: list[np.ndarray | None], labels: list[str],
               colors: list[tuple[int, int, int]], alpha: float = 0.5) -> np.ndarray:
    """frame uint8 (H, W, 3) RGB, masks bool (H, W) per instance (None: absent here) -> annotated copy.

    Every step works inside each mask's bounding box, with OpenCV's blend and masked copy (a 1080p frame with 8
    instances took 190 ms when the whole frame was blended and scanned per instance in numpy)."""
    out = frame.copy()
    scale = max(0.35, min(out.shape[:2]) / 720)
    boxes = [_bbox(m) if m is not None else None for m in masks]
    for mask, box, color in zip(masks, boxes, colors):
        if box is None:
            continue
        y0, y1, x0, x1 = box
        region = out[y0:y1, x0:x1]  # a view: cv2.copyTo writes into the frame
        inside = np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8)
        mixed = cv2.addWeighted(region, 1 - alpha, np.full_like(region, color), alpha, 0.0)
        cv2.copyTo(mixed, inside, region)
    placed: list[tuple[int, int, int, int]] = []  # label boxes drawn so far: a later label moves below them
    for mask, box, label, color in zip(masks, boxes, labels, colors):
        if box is None:
            continue
        y0, y1, x0, x1 = box
        contours, _ = cv2.findContours(np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8),
                                       cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))
        cv2.drawContours(out, contours, -1, color, max(1, int(2 * scale)))
        _put_label(out, label, (x0, max(y0 - 4, 12)), color, scale, placed)
    # Legend: every shown instance, even when absent in this frame.
    for i, (label, color) in enumerate(zip(labels, colors)):
        y = int(18 * scale / 0.5) * (i + 1)
        _put_label(out, label, (6, y), color, scale)
    return out


def _put_label(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int], scale: float,
               avoid: list[tuple[int, int, int, int]] | None = None) -> None:
    """Text on a black box with its baseline at org; with `avoid` (boxes (x0, y0, x1, y1) already drawn), moved
    down until it overlaps none of them, then added to them (two instances on one object keep both labels)."""
    thickness = max(1, int(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = org
    for _ in range(len(avoid or ()) + 1):
        rect = (x - 2, y - h - 3, x + w + 2, y + base)
        hit = [r for r in avoid or () if rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3]]
        if not hit:
            break
        y = max(r[3] for r in hit) + h + 4
    if avoid is not None:
        avoid.append((x - 2, y - h - 3, x + w + 2, y + base))
    cv2.rectangle(img, (x - 2, y - h - 3), (x + w + 2, y + base), (0, 0, 0), -1)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


class VideoRenderer:
    """A `FrameSink` that draws the instances whose class probability is >= score_threshold onto each frame and
    writes an mp4 at `fps`, atomically: frames go to a hidden temporary file beside `out_path`, which replaces
    `out_path` only when `finish` is called after the last frame (an error or `abort` removes it). Progress is
    shown by run_video's bars (progress=True).

    Why class probability, not the final score: the final score also multiplies the mask score, a mean over
    every frame of the video that is known only after the last frame's masks are made, so a video written while
    the frames stream past (recompute mode's second pass) cannot wait for it. Keep and recompute mode draw the
    same instances with the same labels ("person 0.91": class and class probability).
    """

    def __init__(self, out_path: str | Path, fps: float, class_names: tuple[str, ...] | list[str] = (),
                 score_threshold: float = 0.3) -> None:
        self.out_path = Path(out_path)
        self.fps, self.class_names, self.score_threshold = fps, tuple(class_names), score_threshold
        self.shown: list[int] = []  # indices into the top-k of the instances drawn
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._tmp: str | None = None

    def begin(self, class_scores: list[float], labels: list[int], height: int, width: int) -> None:
        """Choose the instances and open the temporary mp4 (height x width, the source resolution)."""
        self.shown = [i for i, s in enumerate(class_scores) if s >= self.score_threshold]
        names = self.class_names
        self._labels = [f"{names[labels[i]] if names else labels[i]} {class_scores[i]:.2f}" for i in self.shown]
        self._colors = instance_colors(len(self.shown))
        try:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.out_path)) from None
        self._tmp = temp_file_for(self.out_path, suffix=".mp4")
        self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        if not self._writer.isOpened():
            self.abort()
            if min(width, height) < 2:
                raise InputError(f"cannot render a {width}x{height} video to mp4: OpenCV's mp4 encoder (mp4v) needs "
                                 "frames at least 2 pixels wide and high", self.out_path,
                                 "leave --out out (the JSON results do not need it)")
            raise InputError(f"OpenCV's mp4 encoder (mp4v) could not open a {width}x{height} video at {self.fps} fps",
                             self.out_path, "check that the folder is writable and that OpenCV has an mp4 "
                                            "encoder (opencv-python-headless does), or leave --out out")

    def write(self, frame: np.ndarray, rles: list[dict]) -> None:
        """frame uint8 (H, W, 3) RGB; rles: this frame's RLE of every top-k instance (only the shown are drawn)."""
        if self._writer is None:
            raise RuntimeError("VideoRenderer.write before begin")
        masks = [mask_utils.decode(rles[i]).view(bool) if mask_utils.area(rles[i]) else None for i in self.shown]
        self._writer.write(cv2.cvtColor(draw_frame(frame, masks, self._labels, self._colors), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def finish(self) -> Path:
        """Close the mp4 and move it to out_path."""
        if self._writer is None:
            raise RuntimeError("VideoRenderer.finish before begin: no frame was rendered")
        self._writer.release()
        publish(self._tmp, self.out_path)  # with the umask's mode, as every other output
        self._writer = self._tmp = None
        return self.out_path

    def abort(self) -> None:
        """Drop the temporary mp4 (out_path is left as it was)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None and os.path.exists(self._tmp):
            os.remove(self._tmp)
        self._tmp = None

    def __enter__(self) -> "VideoRenderer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._writer is not None:
            self.finish()
        else:
            self.abort()


def track_color(track_id: int) -> tuple[int, int, int]:
    """The RGB colour of a track: the same golden-ratio hue sequence as `instance_colors`, indexed by track id,
    so an identity keeps its colour for the whole stream."""
    h = (0.61803 * track_id) % 1.0
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0))


class TrackRenderer(VideoRenderer):
    """The windowed mode's sink (`vita_deploy.pipeline.windowed.TrackSink`): each frame is drawn as soon as its
    window is done, with the tracks whose class probability in that window is >= score_threshold, each in its
    track's persistent colour and labelled "#id class prob". Written atomically like VideoRenderer (`finish` at the
    end; after SIGINT the frames written so far are kept)."""

    def begin_tracks(self, height: int, width: int) -> None:
        self.begin([], [], height, width)
        self.track_ids: set[int] = set()

    def write_tracks(self, frame: np.ndarray, tracks: list[tuple[int, int, float, dict]]) -> None:
        if self._writer is None:
            raise RuntimeError("TrackRenderer.write_tracks before begin_tracks")
        masks, labels, colors = [], [], []
        for tid, label, prob, rle in tracks:
            if prob < self.score_threshold or not mask_utils.area(rle):
                continue
            name = self.class_names[label] if self.class_names else label
            masks.append(mask_utils.decode(rle).view(bool))
            labels.append(f"#{tid} {name} {prob:.2f}")
            colors.append(track_color(tid))
            self.track_ids.add(tid)
        self._writer.write(cv2.cvtColor(draw_frame(frame, masks, labels, colors), cv2.COLOR_RGB2BGR))
        self.frames += 1
