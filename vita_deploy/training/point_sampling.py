"""Point-sampled mask losses (PointRend-style, as Mask2Former and VITA train): instead of full masks, compare
predictions and targets at P points, most of them where the prediction is uncertain."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """inputs (N, C, H, W), coords (N, P, 2) as (x, y) in [0, 1] -> (N, C, P), bilinear, align_corners=False."""
    return F.grid_sample(inputs, 2.0 * coords[:, :, None] - 1.0, mode="bilinear", align_corners=False).squeeze(3)


@torch.no_grad()
def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                           importance_sample_ratio: float = 0.75) -> torch.Tensor:
    """logits (N, 1, H, W) -> coords (N, P, 2): `importance_sample_ratio` of the points are the most uncertain
    (|logit| smallest) among `oversample_ratio * P` random candidates, the rest uniformly random."""
    n = logits.shape[0]
    candidates = torch.rand(n, int(num_points * oversample_ratio), 2, device=logits.device)
    uncertainty = -point_sample(logits.float(), candidates).abs()[:, 0]  # (N, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    coords = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
    if num_points > num_uncertain:
        coords = torch.cat([coords, torch.rand(n, num_points - num_uncertain, 2, device=logits.device)], 1)
    return coords


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """logits, targets (N, P) -> mean BCE per mask, summed, / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """logits, targets (N, P) -> sum of (1 - soft dice) / num_masks."""
    p = logits.sigmoid()
    numerator = 2 * (p * targets).sum(-1)
    denominator = p.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def batch_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean BCE: logits (N, P), targets (M, P) -> (N, M)."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice cost: logits (N, P), targets (M, P) -> (N, M)."""
    p = logits.sigmoid()
    numerator = 2 * p @ targets.T
    denominator = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)
