"""Hungarian matching of predictions to ground truth (scipy's linear_sum_assignment).

Cost = cost_class * (-p(target class)) + cost_mask * BCE + cost_dice * dice, where p is the softmax over K+1
classes and the masks are compared at `num_points` uniform random points shared by all predictions and
targets of one item (Mask2Former `matcher.py`). `FrameMatcher` matches per frame; `VideoMatcher` matches
per clip with the same points in every frame, so each track is a vector of T * num_points values
(VITA `vita_matcher.py`), separately for each of the L frame-query copies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from vita_deploy.training.point_sampling import point_sample

Match = tuple[torch.Tensor, torch.Tensor]  # (prediction indices, target indices), int64, equal length


class MatcherInputError(ValueError):
    """Predictions and targets that cannot be matched (shapes, non-finite costs)."""


def batch_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE between every prediction and every target: logits (N, P), targets (M, P) -> (N, M)."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")  # -log p
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")  # -log(1-p)
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft dice (+1 smoothed) between every prediction and every target: (N, P), (M, P) -> (N, M)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class SetMatcher:
    """Shared cost and assignment for one item: Q predictions vs G targets, masks with T frames (T=1 per frame)."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise MatcherInputError("all matching costs are 0: set at least one of cost_class/cost_mask/cost_dice")
        if num_points <= 0:
            raise MatcherInputError(f"num_points must be positive, got {num_points}")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def match_one(self, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                  target_masks: torch.Tensor) -> Match:
        """logits (Q, K+1); masks (Q, T, h, w) logits; labels (G,); target_masks (G, T, H, W) -> min(Q, G) pairs."""
        empty = torch.zeros(0, dtype=torch.int64)
        if labels.numel() == 0:
            return empty, empty
        if masks.dim() != 4 or target_masks.dim() != 4 or masks.shape[1] != target_masks.shape[1]:
            raise MatcherInputError(f"masks must be (Q, T, h, w) and targets (G, T, H, W) with the same T; got "
                                    f"{tuple(masks.shape)} and {tuple(target_masks.shape)}")
        q, g = masks.shape[0], target_masks.shape[0]
        cost_class = -logits.float().softmax(-1)[:, labels]  # (Q, G)
        # One set of points for all predictions, all targets and all frames (T acts as channels).
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        pred = point_sample(masks.float(), coords.expand(q, -1, -1)).flatten(1)  # (Q, T*P)
        tgt = point_sample(target_masks.to(masks.device, torch.float32), coords.expand(g, -1, -1)).flatten(1)
        cost = (self.cost_class * cost_class + self.cost_mask * batch_sigmoid_ce_cost(pred, tgt)
                + self.cost_dice * batch_dice_cost(pred, tgt))
        cost = cost.cpu()
        if not torch.isfinite(cost).all():
            raise MatcherInputError("the matching cost has NaN/inf entries: the predictions are not finite "
                                    "(training diverged; lower the learning rate or check AMP)")
        rows, cols = linear_sum_assignment(cost.numpy())
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class FrameMatcher(SetMatcher):
    """Per-frame matching of the frame detector's predictions (Mask2Former)."""

    @torch.no_grad()
    def __call__(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, targets: list[dict]) -> list[Match]:
        """pred_logits (N, Q, K+1), pred_masks (N, Q, h, w); targets: N dicts with labels (G,), masks (G, H, W).
        Returns N (pred_idx, tgt_idx) pairs."""
        if pred_masks.dim() != 4 or len(targets) != pred_logits.shape[0]:
            raise MatcherInputError(f"expected pred_masks (N, Q, h, w) and N={pred_logits.shape[0]} frame targets; "
                                    f"got {tuple(pred_masks.shape)} and {len(targets)} targets")
        return [self.match_one(pred_logits[i], pred_masks[i][:, None], t["labels"], t["masks"][:, None])
                for i, t in enumerate(targets)]


class VideoMatcher(SetMatcher):
    """Clip-level matching of VITA's video queries, once per frame-query copy (official `targets * L`)."""

    @torch.no_grad()
    def __call__(self, pred_logits: torch.Tensor, pred_mask_embed: torch.Tensor, mask_features: torch.Tensor,
                 targets: list[dict]) -> list[Match]:
        """pred_logits (L, B, cQ, K+1), pred_mask_embed (L, B, cQ, C), mask_features (B, T, C, h, w); targets: B
        dicts with labels (G,), masks (G, T, H, W). Returns L*B pairs, copy l of video b at index l*B + b.

        Video mask logits are einsum("qc,tchw->qthw"), built one copy at a time to bound memory.
        """
        num_copies, b = pred_logits.shape[:2]
        if pred_mask_embed.shape[:3] != pred_logits.shape[:3] or mask_features.shape[0] != b or len(targets) != b:
            raise MatcherInputError(f"shapes disagree: pred_logits {tuple(pred_logits.shape)}, pred_mask_embed "
                                    f"{tuple(pred_mask_embed.shape)}, mask_features {tuple(mask_features.shape)}, "
                                    f"{len(targets)} targets")
        matches = []
        for n in range(num_copies * b):
            l, i = divmod(n, b)
            masks = torch.einsum("qc,tchw->qthw", pred_mask_embed[l, i].float(), mask_features[i].float())
            matches.append(self.match_one(pred_logits[l, i], masks, targets[i]["labels"], targets[i]["masks"]))
        return matches
