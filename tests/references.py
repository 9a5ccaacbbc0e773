"""Plain, slow references that the fast paths are tested against. Used by tests only (README "How correctness is
checked"): each is the official computation written out directly, in float64 where rounding matters, with no
windowing, caching, batching or kernel of its own.

- `bilinear_weights`: the 1-D weights of `F.interpolate(mode="bilinear", align_corners=False)`, by its formula.
- `official_chunk`: VITA's mask step for a chunk of frames (einsum, bilinear to the padded input, crop, mean
  sigmoid inside the hard mask, bilinear to the original frame, > 0), dense, float64.
- `official_video`: whole-video inference as the official code runs it (every frame through the detector, VITA once,
  top-k, `official_chunk` over all frames at once), the reference of `run_video` in every mode and backend.
- `deform_attn_loop`: multi-scale deformable attention by hand (four corners, zeros outside), float64 loops.
- `deform_attn_grid_sample`: the same with `grid_sample` in float64, for sizes the loops are too slow for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def bilinear_weights(n_in: int, n_out: int) -> torch.Tensor:
    """float64 (n_out, n_in): output i samples the input at (i + 0.5) * n_in / n_out - 0.5, clamped at 0 below,
    between its two neighbours (the last one repeated at the far border)."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = n_in / n_out
    for i in range(n_out):
        x = max((i + 0.5) * scale - 0.5, 0.0)
        x0 = min(int(math.floor(x)), n_in - 1)
        x1 = min(x0 + 1, n_in - 1)
        frac = x - x0
        w[i, x0] += 1.0 - frac
        w[i, x1] += frac
    return w


@dataclass
class ChunkReference:
    numerator: torch.Tensor  # (k,) sum of sigmoid inside the hard mask, float64
    denominator: torch.Tensor  # (k,) hard-mask area
    masks: torch.Tensor  # bool (k, t, H, W) at the original frame
    logits: torch.Tensor  # float64 (k, t, H, W): the thresholded logits (to tell exact-zero ties)
    score_logits: torch.Tensor  # float64 (k, t, h, w): logits at the resized frame (mask-score ties)


def official_chunk(embed: torch.Tensor, features: torch.Tensor, padded_hw: tuple[int, int], size_hw: tuple[int, int],
                   orig_hw: tuple[int, int]) -> ChunkReference:
    """embed (k, C), features (t, C, h4, w4) -> the official mask step (vita_spec.md 3.5), dense, float64."""
    logits = torch.einsum("qc,tchw->qthw", embed.double(), features.double())
    logits = F.interpolate(logits, size=padded_hw, mode="bilinear", align_corners=False)
    logits = logits[:, :, :size_hw[0], :size_hw[1]]
    soft = logits.sigmoid()
    hard = soft > 0.5
    full = F.interpolate(logits, size=orig_hw, mode="bilinear", align_corners=False)
    return ChunkReference((soft * hard).flatten(1).sum(1), hard.flatten(1).sum(1).double(), full > 0, full, logits)


@dataclass
class VideoReference:
    scores: torch.Tensor  # (k,) class probability x mask score
    labels: torch.Tensor  # (k,)
    masks: torch.Tensor  # bool (k, T, H, W)
    logits: torch.Tensor  # float64 (k, T, H, W)
    score_logits: torch.Tensor  # float64 (k, T, h, w)


@torch.no_grad()
def official_video(model: torch.nn.Module, frames: list[np.ndarray]) -> VideoReference:
    """Whole-video inference the plain way: every frame resized (PIL bilinear, as detectron2), normalised and padded
    at once, the frame detector over all frames in one batch, VITA once, softmax top-k over (query, class) pairs,
    then `official_chunk` over all frames at once. uint8 (H, W, 3) RGB frames -> VideoReference."""
    from PIL import Image  # the resize detectron2 uses for uint8 frames

    cfg = model.cfg
    inp = cfg.input
    height, width = frames[0].shape[:2]
    scale = inp.min_size_test / min(height, width)
    h, w = (inp.min_size_test, scale * width) if height < width else (scale * height, inp.min_size_test)
    if max(h, w) > inp.max_size_test:
        s = inp.max_size_test / max(h, w)
        h, w = h * s, w * s
    h, w = int(h + 0.5), int(w + 0.5)
    resized = [f if f.shape[:2] == (h, w) else np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
               for f in frames]
    x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(inp.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(inp.pixel_std).view(1, 3, 1, 1)
    div = inp.size_divisibility
    hp, wp = -(-h // div) * div, -(-w // div) * div
    x = F.pad(x, (0, wp - w, 0, hp - h))
    frame_queries, mask_features = model.frame_detector(x)
    class_logits, mask_embed = model.vita_head(frame_queries)
    probs = class_logits.double().softmax(-1)[:, :-1]
    scores, flat = probs.flatten().topk(min(cfg.inference.topk, probs.numel()))
    labels, query = flat % probs.shape[1], flat // probs.shape[1]
    ref = official_chunk(mask_embed[query], mask_features, (hp, wp), (h, w), (height, width))
    mask_score = ref.numerator / (ref.denominator + 1e-6)
    return VideoReference(scores * mask_score, labels, ref.masks, ref.logits, ref.score_logits)


def deform_attn_loop(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """value (N, S, M, D), locations (N, Lq, M, L, P, 2) in [0, 1] (x, y), weights (N, Lq, M, L, P)
    -> float64 (N, Lq, M, D). Bilinear sampling by hand: pixel centres at (i + 0.5), zeros outside the map."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = locations.shape
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(num_points):
                        x = locations[b, q, head, lvl, p, 0].item() * w - 0.5
                        y = locations[b, q, head, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = torch.zeros(d, dtype=torch.float64)
                        for yy, xx, wt in ((y0, x0, (1 - (y - y0)) * (1 - (x - x0))),
                                           (y0, x0 + 1, (1 - (y - y0)) * (x - x0)),
                                           (y0 + 1, x0, (y - y0) * (1 - (x - x0))),
                                           (y0 + 1, x0 + 1, (y - y0) * (x - x0))):
                            if 0 <= yy < h and 0 <= xx < w:
                                acc += wt * value[b, starts[lvl] + yy * w + xx, head].double()
                        out[b, q, head] += weights[b, q, head, lvl, p].item() * acc
    return out


def deform_attn_grid_sample(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                            weights: torch.Tensor) -> torch.Tensor:
    """Same contract as `deform_attn_loop`, with `grid_sample` (bilinear, zeros, align_corners=False) in float64."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = locations.shape
    levels = value.double().split([h * w for h, w in shapes], dim=1)
    out = torch.zeros(n * m, d, lq, dtype=torch.float64)
    for lvl, (h, w) in enumerate(shapes):
        v = levels[lvl].permute(0, 2, 3, 1).reshape(n * m, d, h, w)  # (N*M, D, h, w)
        grid = locations[:, :, :, lvl].double() * 2 - 1  # (N, Lq, M, P, 2)
        grid = grid.permute(0, 2, 1, 3, 4).reshape(n * m, lq, num_points, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N*M, D, Lq, P)
        wt = weights[:, :, :, lvl].double().permute(0, 2, 1, 3).reshape(n * m, 1, lq, num_points)
        out += (sampled * wt).sum(-1)
    return out.view(n, m, d, lq).permute(0, 3, 1, 2)  # (N, Lq, M, D)
