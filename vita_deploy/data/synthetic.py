"""Synthetic video instance segmentation data in the exact YouTube-VIS 2019 layout.

    vita-deploy data --out data/synthetic --videos 300 --val-videos 40 --seed 0

writes `DIR/train/JPEGImages/<video>/<frame>.jpg` and `DIR/train.json` (and the same for `valid` with
`--val-videos`; unlike the real valid split it carries annotations, so it can be evaluated locally).
Videos have 6-36 frames of 4:3 to 16:9 frames; 1-4 textured shapes of 5 categories move, scale and rotate
over a textured background, occlude each other (z-order), and may enter late or leave early (null frames).
Deterministic for a seed.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vita_deploy.config import SYNTHETIC_CLASSES

# Hue (OpenCV 0-180) centre per category and its texture, so classes differ in shape, colour and texture.
CATEGORY_STYLE = {"circle": (0, "stripes"), "square": (30, "checker"), "triangle": (60, "dots"),
                  "star": (100, "noise"), "ring": (140, "gradient")}


@dataclass
class SyntheticVideo:
    """frames: uint8 (T, H, W, 3) RGB; masks: bool (N, T, H, W) visible masks; labels: (N,) 0-based category;
    present: bool (N, T), False where the instance is absent or fully occluded (null in the JSON)."""

    frames: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    present: np.ndarray


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    grad = rng.uniform(-60, 60, (2, 3))
    img = base + (yy[..., None] / h) * grad[0] + (xx[..., None] / w) * grad[1]
    noise = cv2.resize(rng.normal(0, 25, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32), (w, h))
    img = img + noise
    for _ in range(rng.integers(3, 8)):  # distractor lines and blobs, desaturated
        color = tuple(float(c) for c in rng.uniform(60, 190, 3))
        if rng.random() < 0.5:
            cv2.line(img, tuple(int(v) for v in rng.integers(0, [w, h])), tuple(int(v) for v in rng.integers(0, [w, h])),
                     color, int(rng.integers(1, 4)))
        else:
            cv2.ellipse(img, tuple(int(v) for v in rng.integers(0, [w, h])), tuple(int(v) for v in rng.integers(4, 20, 2)),
                        float(rng.uniform(0, 180)), 0, 360, color, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator, category: str, h: int, w: int) -> np.ndarray:
    """A texture covering the frame in the category's hue family (HSV -> RGB)."""
    hue_center, kind = CATEGORY_STYLE[category]
    hue = (hue_center + rng.integers(-8, 9)) % 180
    yy, xx = np.mgrid[0:h, 0:w]
    period = int(rng.integers(5, 10))
    if kind == "stripes":
        pattern = ((xx + yy) // period) % 2
    elif kind == "checker":
        pattern = ((xx // period) + (yy // period)) % 2
    elif kind == "dots":
        pattern = (((xx % (2 * period)) - period) ** 2 + ((yy % (2 * period)) - period) ** 2 < (period * 0.6) ** 2)
    elif kind == "noise":
        pattern = cv2.resize(rng.random((h // 4 + 1, w // 4 + 1)).astype(np.float32), (w, h)) > 0.5
    else:  # gradient
        pattern = (xx / max(w - 1, 1))
    value = 150 + 90 * pattern.astype(np.float32)
    hsv = np.stack([np.full((h, w), hue, np.float32), np.full((h, w), rng.uniform(150, 255), np.float32),
                    np.clip(value + rng.normal(0, 6, (h, w)), 0, 255)], -1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _shape_mask(category: str, h: int, w: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    center = (int(round(cx)), int(round(cy)))
    if category == "circle":
        cv2.circle(mask, center, int(round(r)), 1, -1)
    elif category == "ring":
        cv2.ellipse(mask, center, (int(round(r)), int(round(r * 0.7))), np.degrees(angle), 0, 360, 1, -1)
        cv2.ellipse(mask, center, (int(round(r * 0.5)), int(round(r * 0.3))), np.degrees(angle), 0, 360, 0, -1)
    else:
        if category == "square":
            pts = [(np.cos(angle + k * np.pi / 2 + np.pi / 4), np.sin(angle + k * np.pi / 2 + np.pi / 4)) for k in range(4)]
            radii = [r] * 4
        elif category == "triangle":
            pts = [(np.cos(angle + k * 2 * np.pi / 3), np.sin(angle + k * 2 * np.pi / 3)) for k in range(3)]
            radii = [r * 1.2] * 3
        else:  # star
            pts = [(np.cos(angle + k * np.pi / 5), np.sin(angle + k * np.pi / 5)) for k in range(10)]
            radii = [r * (1.15 if k % 2 == 0 else 0.5) for k in range(10)]
        poly = np.array([[cx + rr * px, cy + rr * py] for (px, py), rr in zip(pts, radii)], np.int32)
        cv2.fillPoly(mask, [poly], 1)
    return mask.astype(bool)


def make_video(rng: np.random.Generator, min_frames: int = 6, max_frames: int = 36, min_instances: int = 1,
               max_instances: int = 4) -> SyntheticVideo:
    """One synthetic video with its ground truth (see SyntheticVideo)."""
    t_len = int(rng.integers(min_frames, max_frames + 1))
    h = int(rng.choice([144, 160, 176, 192]))
    w = int(round(h * rng.choice([4 / 3, 3 / 2, 16 / 9]) / 8) * 8)
    n = int(rng.integers(min_instances, max_instances + 1))
    background = _background(rng, h, w)
    bg_shift = rng.uniform(-1.5, 1.5, 2)  # slow camera pan
    labels = rng.integers(0, len(SYNTHETIC_CLASSES), n)
    textures = [_texture(rng, SYNTHETIC_CLASSES[c], h, w) for c in labels]
    short = min(h, w)
    params = []
    for _ in range(n):
        start, end = 0, t_len - 1
        if t_len >= 8 and rng.random() < 0.3:
            start = int(rng.integers(1, t_len // 2))
        if t_len >= 8 and rng.random() < 0.3:
            end = int(rng.integers(max(start + 3, t_len // 2), t_len))
        params.append({
            "start": start, "end": end,
            "pos": rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h]),
            "vel": rng.uniform(-0.025, 0.025, 2) * short,
            "r": rng.uniform(0.12, 0.24) * short, "scale_rate": rng.uniform(-0.015, 0.015),
            "angle": rng.uniform(0, 2 * np.pi), "spin": rng.uniform(-0.12, 0.12),
        })
    frames = np.zeros((t_len, h, w, 3), np.uint8)
    masks = np.zeros((n, t_len, h, w), bool)
    for t in range(t_len):
        shift = (bg_shift * t).round().astype(int)
        frame = np.roll(background, (int(shift[1]), int(shift[0])), axis=(0, 1)).copy()
        for i, p in enumerate(params):  # later instances are drawn on top
            if not p["start"] <= t <= p["end"]:
                continue
            dt = t - p["start"]
            cx, cy = p["pos"] + p["vel"] * dt
            cx, cy = float(np.clip(cx, 0, w)), float(np.clip(cy, 0, h))
            r = max(6.0, p["r"] * (1 + p["scale_rate"]) ** dt)
            m = _shape_mask(SYNTHETIC_CLASSES[labels[i]], h, w, cx, cy, r, p["angle"] + p["spin"] * dt)
            tex = np.roll(textures[i], (int(round(p["vel"][1] * dt)), int(round(p["vel"][0] * dt))), axis=(0, 1))
            frame[m] = tex[m]
            masks[:i, t] &= ~m  # occlusion
            masks[i, t] = m
        frames[t] = frame
    present = masks.any(axis=(2, 3))
    return SyntheticVideo(frames, masks, labels, present)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """bool (H, W) -> {"counts": [ints], "size": [H, W]}: run lengths of the column-major flattening, starting
    with zeros, as in the real YouTube-VIS train.json."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    counts = runs.tolist() if flat[0] == 0 else [0, *runs.tolist()]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def generate_split(out_dir: str | Path, split: str, num_videos: int, seed: int, min_frames: int = 6,
                   max_frames: int = 36, progress: bool = True) -> Path:
    """Write `out_dir/<split>/JPEGImages/...` and `out_dir/<split>.json`; returns the JSON path."""
    out_dir = Path(out_dir)
    image_root = out_dir / split / "JPEGImages"
    rng = np.random.default_rng(seed)
    videos, annotations = [], []
    for v in tqdm(range(num_videos), desc=f"synthetic {split}", unit="video", disable=not progress):
        video = make_video(rng, min_frames, max_frames)
        name = f"{split[:1]}{seed:04d}{v:05d}"
        (image_root / name).mkdir(parents=True, exist_ok=True)
        file_names = []
        for t, frame in enumerate(video.frames):
            rel = f"{name}/{t * 5:05d}.jpg"  # every 5th frame, as in YouTube-VIS
            cv2.imwrite(str(image_root / rel), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            file_names.append(rel)
        t_len, h, w = video.frames.shape[:3]
        vid = v + 1
        videos.append({"id": vid, "width": w, "height": h, "length": t_len, "file_names": file_names,
                       "license": 1, "flickr_url": "", "coco_url": "", "date_captured": ""})
        for i in range(len(video.labels)):
            if not video.present[i].any():
                continue
            segs, boxes, areas = [], [], []
            for t in range(t_len):
                m = video.masks[i, t]
                if not video.present[i, t]:
                    segs.append(None), boxes.append(None), areas.append(None)
                    continue
                ys, xs = np.nonzero(m)
                segs.append(uncompressed_rle(m))
                boxes.append([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)])
                areas.append(int(m.sum()))
            annotations.append({"id": len(annotations) + 1, "video_id": vid, "category_id": int(video.labels[i]) + 1,
                                "iscrowd": 0, "height": h, "width": w, "length": t_len, "segmentations": segs,
                                "bboxes": boxes, "areas": areas})
    data = {"info": {"description": f"vita-deploy synthetic YouTube-VIS ({split}, seed {seed})", "version": "1.0"},
            "licenses": [{"id": 1, "name": "CC0"}],
            "videos": videos,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SYNTHETIC_CLASSES)],
            "annotations": annotations}
    json_path = out_dir / f"{split}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(json_path)
    return json_path


if __name__ == "__main__":  # `python -m vita_deploy.data.synthetic`: the earlier spelling of `vita-deploy data`
    from vita_deploy.commands.data import main

    sys.exit(main(prog="python -m vita_deploy.data.synthetic"))
