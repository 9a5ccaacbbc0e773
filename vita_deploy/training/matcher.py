"""Hungarian matching of predictions to targets (scipy's linear_sum_assignment).

Cost = cost_class * (-p(class)) + cost_mask * BCE + cost_dice * dice, with the masks compared at random
points shared by predictions and targets: per frame for the frame detector (Mask2Former `matcher.py`), and
over the whole clip for VITA (`vita_matcher.py`: the same points in every frame, T * P values per track).
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from vita_deploy.training.point_sampling import batch_dice_cost, batch_sigmoid_ce_cost, point_sample

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def _assign(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher:
    """One matcher for frames and clips: masks are (Q, T, h, w) predictions vs (G, T, H, W) targets (T=1 for
    frames). Returns, per item, (prediction indices, target indices) of equal length min(Q, G)."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544) -> None:
        self.cost_class, self.cost_mask, self.cost_dice, self.num_points = cost_class, cost_mask, cost_dice, num_points

    @torch.no_grad()
    def match_one(self, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, target_masks: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (Q, K+1), masks (Q, T, h, w) logits, labels (G,), target_masks (G, T, H, W)."""
        if labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty
        q, t = masks.shape[:2]
        g = labels.shape[0]
        cost_class = -logits.float().softmax(-1)[:, labels]  # (Q, G)
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        # The same points in every frame: (Q*T, 1, h, w) -> (Q, T*P)
        pred = point_sample(masks.float().flatten(0, 1)[:, None], coords.expand(q * t, -1, -1)).view(q, -1)
        tgt = point_sample(target_masks.float().flatten(0, 1)[:, None], coords.expand(g * t, -1, -1)).view(g, -1)
        cost = (self.cost_mask * batch_sigmoid_ce_cost(pred, tgt) + self.cost_class * cost_class
                + self.cost_dice * batch_dice_cost(pred, tgt))
        return _assign(cost)

    def __call__(self, logits: torch.Tensor, masks: torch.Tensor, targets: list[dict]) -> Indices:
        """logits (N, Q, K+1), masks (N, Q, T, h, w); targets: N dicts with labels (G,), masks (G, T, H, W)."""
        return [self.match_one(logits[i], masks[i], t["labels"], t["masks"]) for i, t in enumerate(targets)]
