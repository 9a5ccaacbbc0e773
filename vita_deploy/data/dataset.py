"""Training clips from a YouTube-VIS folder: official frame sampling and clip-consistent augmentation.

Sampling (`vita/data/dataset_mapper.py`): a random reference frame, then T-1 more drawn WITH replacement from
[ref - range, ref + range] (clipped to the video, excluding the reference), sorted. Augmentation draws its
parameters once per clip (`vita/data/augmentation.py`): optional random crop, shortest-edge resize, flip. The crop
size is the same for every frame while its origin moves along a line across the clip, as the official
`RandomCropClip` does, so a crop looks like a slow camera pan.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from vita_deploy.config import TrainRecipeConfig
from vita_deploy.data.ytvis_json import YTVISFormatError, category_mapping, load_ytvis_json, segmentation_to_rle
from vita_deploy.pipeline.video_io import read_image


def sample_frame_indices(rng: np.random.Generator, length: int, num_frames: int, frame_range: int) -> np.ndarray:
    """Reference frame + (num_frames - 1) draws with replacement within +-frame_range, sorted."""
    ref = int(rng.integers(length))
    lo, hi = max(0, ref - frame_range), min(length, ref + frame_range + 1)
    candidates = [i for i in range(lo, hi) if i != ref]
    if num_frames == 1 or not candidates:
        others = np.full(num_frames - 1, ref)
    else:
        others = rng.choice(candidates, num_frames - 1, replace=True)
    return np.sort(np.concatenate([[ref], others])).astype(np.int64)


@dataclass
class ClipAugmentation:
    """Clip-consistent augmentation. Defaults suit the small synthetic frames (the `tiny` recipe);
    `from_recipe(get_config(name).train)` gives a config's own, e.g. the official YouTube-VIS values."""

    min_sizes: tuple[int, ...] = (128, 144, 160, 176)
    max_size: int = 256
    crop_prob: float = 0.5
    crop_resize_sizes: tuple[int, ...] = (144, 160, 192)  # short side before cropping
    crop_range: tuple[int, int] = (112, 176)  # absolute crop side range (h and w drawn independently)
    flip_prob: float = 0.5

    @classmethod
    def from_recipe(cls, recipe: TrainRecipeConfig) -> "ClipAugmentation":
        """The INPUT section of a config's training recipe (MIN/MAX_SIZE_TRAIN, CROP.SIZE, the pre-crop resize)."""
        return cls(min_sizes=tuple(recipe.min_size_train), max_size=recipe.max_size_train, crop_prob=0.5,
                   crop_resize_sizes=tuple(recipe.crop_resize_sizes), crop_range=tuple(recipe.crop_size),
                   flip_prob=0.5)

    def sample(self, rng: np.random.Generator, h: int, w: int, num_frames: int = 1) -> dict:
        """Parameters for one clip of `num_frames` frames of (h, w) pixels.

        The crop origin of frame j is start + s_j * (end - start) with sorted uniform s_j, start and end drawn
        with end >= start in both axes, and the order reversed with probability 0.5 (official `RandomCropClip`).
        """
        params: dict = {"flip": bool(rng.random() < self.flip_prob), "crop": None}
        if rng.random() < self.crop_prob:
            short = int(rng.choice(self.crop_resize_sizes))
            rh, rw = _short_edge(h, w, short, 10**6)
            ch = int(min(rh, rng.integers(self.crop_range[0], self.crop_range[1] + 1)))
            cw = int(min(rw, rng.integers(self.crop_range[0], self.crop_range[1] + 1)))
            y0, x0 = int(rng.integers(rh - ch + 1)), int(rng.integers(rw - cw + 1))
            y1, x1 = int(rng.integers(y0, rh - ch + 1)), int(rng.integers(x0, rw - cw + 1))
            s = np.sort(rng.random(num_frames))
            ys, xs = np.rint(y0 + s * (y1 - y0)).astype(int), np.rint(x0 + s * (x1 - x0)).astype(int)
            if rng.random() < 0.5:
                ys, xs = ys[::-1], xs[::-1]
            params["crop"] = ((rh, rw), (ys.tolist(), xs.tolist(), ch, cw))
            h, w = ch, cw
        params["size"] = _short_edge(h, w, int(rng.choice(self.min_sizes)), self.max_size)
        return params

    @staticmethod
    def apply(image: np.ndarray, params: dict, is_mask: bool = False, frame: int = 0) -> np.ndarray:
        """Augment frame `frame` of the clip (an (H, W, 3) image or an (H, W) bool mask)."""
        interp = cv2.INTER_NEAREST if is_mask else cv2.INTER_LINEAR
        x = image.astype(np.uint8) if is_mask else image
        if params["crop"] is not None:
            (rh, rw), (ys, xs, ch, cw) = params["crop"]
            y0, x0 = ys[frame], xs[frame]
            x = cv2.resize(x, (rw, rh), interpolation=interp)[y0:y0 + ch, x0:x0 + cw]
        h, w = params["size"]
        x = cv2.resize(x, (w, h), interpolation=interp)
        if params["flip"]:
            x = x[:, ::-1]
        return np.ascontiguousarray(x.astype(bool) if is_mask else x)


def _short_edge(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


class YTVISClipDataset(Dataset):
    """Random clips of `num_frames` frames with video-level targets (see `__getitem__`).

    Item `i` is the clip drawn by the random stream (seed, i): the video, its frames and the augmentation.
    Any integer is a valid index (`len()` is the number of videos, one "epoch"), so a trainer can iterate
    sample numbers 0, 1, 2, ... and resume exactly at any of them.
    """

    def __init__(self, json_path: str | Path, image_root: str | Path, num_frames: int = 5,
                 sampling_frame_range: int = 20, augment: ClipAugmentation | None = None, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.data = load_ytvis_json(json_path)
        self.image_root = Path(image_root)
        self.num_frames, self.frame_range = num_frames, sampling_frame_range
        self.augment, self.seed = augment, seed
        self.category_ids, self._contiguous = category_mapping(self.data)
        names = {c["id"]: c["name"] for c in self.data["categories"]}
        self.category_names = [names[i] for i in self.category_ids]
        self.num_classes = len(self.category_ids)
        if not self.data["annotations"]:
            raise YTVISFormatError(f"{json_path} has no annotations: training needs a labelled split")
        by_video: dict[int, list[dict]] = {}
        for a in self.data["annotations"]:
            by_video.setdefault(a["video_id"], []).append(a)
        self.videos = [v for v in self.data["videos"] if v["id"] in by_video]
        self.annotations = by_video
        first = self.image_root / self.videos[0]["file_names"][0]
        if not first.is_file():
            raise YTVISFormatError(f"image {first} does not exist: --data must hold <split>/JPEGImages next to "
                                   "<split>.json")

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        """images uint8 (T, 3, H, W) RGB; labels int64 (G,) contiguous; ids int64 (G,); masks bool (G, T, H, W);
        valid bool (G, T); video_id; frame_indices int64 (T,). Only instances present in some sampled frame."""
        rng = np.random.default_rng([self.seed, index])  # reproducible and independent of workers
        video = self.videos[int(rng.integers(len(self.videos)))]
        frames_idx = sample_frame_indices(rng, video["length"], self.num_frames, self.frame_range)
        h, w = video["height"], video["width"]
        params = self.augment.sample(rng, h, w, len(frames_idx)) if self.augment else None
        images = []
        for j, t in enumerate(frames_idx):
            image = read_image(self.image_root / video["file_names"][t])
            images.append(self.augment.apply(image, params, frame=j) if params else image)
        anns = self.annotations[video["id"]]
        masks, labels, ids = [], [], []
        for a in anns:
            per_frame = []
            for j, t in enumerate(frames_idx):
                rle = segmentation_to_rle(a["segmentations"][t], h, w)
                m = mask_utils.decode(rle).astype(bool) if rle is not None else np.zeros((h, w), bool)
                per_frame.append(self.augment.apply(m, params, is_mask=True, frame=j) if params else m)
            stack = np.stack(per_frame)
            if stack.any():
                masks.append(stack)
                labels.append(self._contiguous[a["category_id"]])
                ids.append(a["id"])
        out_h, out_w = images[0].shape[:2]
        masks_t = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, len(frames_idx), out_h, out_w,
                                                                                dtype=torch.bool)
        return {
            "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "ids": torch.tensor(ids, dtype=torch.int64),
            "masks": masks_t,
            "valid": masks_t.flatten(2).any(-1),
            "video_id": video["id"],
            "frame_indices": torch.from_numpy(frames_idx),
        }


def collate_clips(batch: list[dict]) -> list[dict]:
    """Keep clips of different sizes as a list; the trainer normalises and pads them together."""
    return batch
