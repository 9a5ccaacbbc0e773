"""Render predictions onto the video: blended masks with per-instance colours, contours, class names and
scores, and a legend; written as mp4 at the source frame rate (OpenCV, headless build)."""
from __future__ import annotations

import colorsys
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from vita_deploy.inference import VideoPrediction


def instance_colors(n: int) -> list[tuple[int, int, int]]:
    """n well-separated RGB colours (golden-ratio hues)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((0.61803 * i) % 1.0, 0.75, 1.0)) for i in range(n)]


def draw_frame(frame: np.ndarray, masks: list[np.ndarray], labels: list[str], colors: list[tuple[int, int, int]],
               alpha: float = 0.5) -> np.ndarray:
    """frame uint8 (H, W, 3) RGB, masks bool (H, W) per instance -> annotated copy."""
    out = frame.astype(np.float32)
    for mask, color in zip(masks, colors):
        out[mask] = out[mask] * (1 - alpha) + np.array(color, np.float32) * alpha
    out = out.astype(np.uint8)
    scale = max(0.35, min(out.shape[:2]) / 720)
    for mask, label, color in zip(masks, labels, colors):
        if not mask.any():
            continue
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, max(1, int(2 * scale)))
        ys, xs = np.nonzero(mask)
        _put_label(out, label, (int(xs.min()), max(int(ys.min()) - 4, 12)), color, scale)
    # Legend: every shown instance, even when absent in this frame.
    for i, (label, color) in enumerate(zip(labels, colors)):
        y = int(18 * scale / 0.5) * (i + 1)
        _put_label(out, label, (6, y), color, scale)
    return out


def _put_label(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int], scale: float) -> None:
    thickness = max(1, int(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = org
    cv2.rectangle(img, (x - 2, y - h - 3), (x + w + 2, y + base), (0, 0, 0), -1)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def render_video(frames: Iterable[np.ndarray], pred: VideoPrediction, out_path: str | Path, fps: float,
                 class_names: tuple[str, ...] | list[str] = (), score_threshold: float = 0.3,
                 progress: bool = True) -> Path:
    """Write an annotated mp4 of `frames` (RGB uint8) with the instances scoring >= score_threshold."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    keep = [i for i, s in enumerate(pred.scores) if s >= score_threshold]
    colors = instance_colors(len(keep))
    labels = [f"{class_names[pred.labels[i]] if class_names else pred.labels[i]} {pred.scores[i]:.2f}" for i in keep]
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".mp4", dir=out_path.parent)
    os.close(fd)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (pred.width, pred.height))
    if not writer.isOpened():
        os.remove(tmp)
        raise RuntimeError(f"OpenCV cannot write mp4 to {out_path}")
    try:
        bar = tqdm(frames, total=pred.num_frames, desc="render", unit="frame", disable=not progress)
        for t, frame in enumerate(bar):
            masks = [mask_utils.decode(pred.segmentations[i][t]).astype(bool) for i in keep]
            writer.write(cv2.cvtColor(draw_frame(frame, masks, labels, colors), cv2.COLOR_RGB2BGR))
        writer.release()
        os.replace(tmp, out_path)
    finally:
        writer.release()
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path
