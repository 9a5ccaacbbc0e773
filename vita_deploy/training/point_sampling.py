"""Point sampling for mask losses and matching (PointRend style, as Mask2Former and VITA train).

Instead of comparing full-resolution masks, predictions and targets are compared at P points given in
normalised image coordinates: (x, y) in [0, 1] x [0, 1], with (0, 0) the top-left corner of the top-left pixel
and (1, 1) the bottom-right corner of the bottom-right pixel (grid_sample with align_corners=False). Because
the coordinates are normalised, a 1/4-resolution prediction and a full-resolution target sampled at the same
coordinates look at the same place in the image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PointSampleError(ValueError):
    """Bad shapes or arguments for point sampling."""


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of `inputs` (N, C, H, W) at `coords` (N, P, 2) as (x, y) in [0, 1] -> (N, C, P).

    Matches detectron2's `point_sample(..., align_corners=False)`: grid = 2 * coords - 1, zero padding outside.
    """
    if inputs.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != inputs.shape[0]:
        raise PointSampleError(f"point_sample expects inputs (N, C, H, W) and coords (N, P, 2) with the same N; "
                               f"got {tuple(inputs.shape)} and {tuple(coords.shape)}")
    grid = (2.0 * coords - 1.0).to(inputs.dtype)[:, :, None]  # (N, P, 1, 2)
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]


@torch.no_grad()
def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                           importance_sample_ratio: float = 0.75) -> torch.Tensor:
    """Training points for mask logits (N, 1, H, W) -> coords (N, num_points, 2) in [0, 1].

    Draws int(num_points * oversample_ratio) uniform candidates per mask, keeps the
    int(importance_sample_ratio * num_points) most uncertain ones (uncertainty = -|logit|, i.e. logits nearest
    the 0.5 decision boundary) and fills the rest with fresh uniform points (detectron2's
    `get_uncertain_point_coords_with_randomness`). Uncertain points first, random points last.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise PointSampleError(f"uncertain_point_coords expects class-agnostic logits (N, 1, H, W); "
                               f"got {tuple(logits.shape)}")
    if num_points <= 0 or oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise PointSampleError(f"need num_points > 0, oversample_ratio >= 1, 0 <= importance_sample_ratio <= 1; "
                               f"got {num_points}, {oversample_ratio}, {importance_sample_ratio}")
    n, device = logits.shape[0], logits.device
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = torch.rand(n, num_sampled, 2, device=device)
    uncertainty = -point_sample(logits.float(), candidates)[:, 0].abs()  # (N, num_sampled)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    coords = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    if num_points > num_uncertain:
        coords = torch.cat([coords, torch.rand(n, num_points - num_uncertain, 2, device=device)], dim=1)
    return coords
