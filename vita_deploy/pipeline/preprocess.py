"""Frame pre-processing shared by inference, training and every backend (vita_spec.md section 3.1-3.2).

Resize the shortest edge (detectron2 `ResizeShortestEdge`, bilinear via PIL as detectron2 does for uint8
frames), normalise with the pixel mean/std (0-255 units, RGB), zero-pad bottom/right to a multiple of 32.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vita_deploy.config import InputConfig


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output (h, w): short side -> short_edge, long side capped at max_size."""
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (h, w, 3), bilinear (PIL, as detectron2's ResizeTransform)."""
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))


def padded_size(height: int, width: int, divisibility: int = 32) -> tuple[int, int]:
    return -(-height // divisibility) * divisibility, -(-width // divisibility) * divisibility


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) float32 mean and std on `device`, made once per device: `torch.tensor(..., device=cuda)` is a
    blocking host-to-device copy, which on every chunk would stall the decoder/compute overlap. Made outside
    inference mode so that training code may use them too."""
    with torch.inference_mode(False):
        return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
                torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def normalize_and_pad(images: torch.Tensor, cfg: InputConfig) -> torch.Tensor:
    """uint8 or float (N, 3, h, w) RGB in 0-255 -> float32 (N, 3, Hp, Wp) normalised, zero-padded to 32."""
    mean, std = _mean_std(tuple(cfg.pixel_mean), tuple(cfg.pixel_std), images.device)
    x = (images.float() - mean) / std
    hp, wp = padded_size(x.shape[-2], x.shape[-1], cfg.size_divisibility)
    return F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]))


def frames_to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """list of uint8 (h, w, 3) RGB -> uint8 (N, 3, h, w)."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
