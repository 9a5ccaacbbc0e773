"""VITA's training losses (vita_spec.md section 4): per-frame Mask2Former losses, video-level VITA losses and
the similarity loss. Each criterion returns UNWEIGHTED named losses (aux layers suffixed `_0`, `_1`, ...) and
exposes `weight_dict`; `VitaLoss` applies the weights.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vita_deploy.training.matcher import HungarianMatcher, Indices
from vita_deploy.training.point_sampling import dice_loss, point_sample, sigmoid_ce_loss, uncertain_point_coords


def _num_masks(count: int, device: torch.device) -> float:
    """Average the number of target masks over processes (DDP), at least 1."""
    n = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(n.item(), 1.0)


class SetCriterion(nn.Module):
    """Matched classification + point-sampled mask losses for predictions with masks (N, Q, T, h, w)."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, eos_coef: float, num_points: int,
                 oversample_ratio: float, importance_sample_ratio: float) -> None:
        super().__init__()
        self.num_classes, self.matcher = num_classes, matcher
        self.num_points, self.oversample, self.importance = num_points, oversample_ratio, importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def layer_losses(self, logits: torch.Tensor, masks: torch.Tensor, targets: list[dict], num_masks: float
                     ) -> tuple[Indices, torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits (N, Q, K+1), masks (N, Q, T, h, w); targets: labels (G,), masks (G, T, H, W).
        Returns (indices, loss_ce, loss_mask, loss_dice)."""
        indices = self.matcher(logits, masks, targets)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for i, (src, tgt) in enumerate(indices):
            target_classes[i, src.to(logits.device)] = targets[i]["labels"][tgt.to(logits.device)]
        loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight)

        src_masks = torch.cat([masks[i, src.to(masks.device)] for i, (src, _) in enumerate(indices)])  # (M, T, h, w)
        if src_masks.shape[0] == 0:  # no target in any item: keep the graph, zero mask losses
            zero = masks.sum() * 0.0
            return indices, loss_ce, zero, zero
        tgt_masks = torch.cat([targets[i]["masks"][tgt.to(masks.device)] for i, (_, tgt) in enumerate(indices)])
        m, t = src_masks.shape[:2]
        # Points chosen per frame, then concatenated per track: (M*T, 1, h, w) -> (M, T*P)
        src_flat = src_masks.float().flatten(0, 1)[:, None]
        coords = uncertain_point_coords(src_flat, self.num_points, self.oversample, self.importance)
        point_logits = point_sample(src_flat, coords).view(m, -1)
        with torch.no_grad():
            point_labels = point_sample(tgt_masks.float().flatten(0, 1)[:, None], coords).view(m, -1)
        return (indices, loss_ce, sigmoid_ce_loss(point_logits, point_labels, num_masks),
                dice_loss(point_logits, point_labels, num_masks))


class FrameCriterion(SetCriterion):
    """Mask2Former losses on every per-frame prediction (deep supervision)."""

    def forward(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, frame_targets: list[dict],
                keep_last: int = 3) -> tuple[dict[str, torch.Tensor], list[Indices]]:
        """pred_logits (P, N, Q, K+1), pred_masks (P, N, Q, h, w); frame_targets: N dicts with masks (G, 1, H, W).
        Returns the losses and the match indices of the last `keep_last` predictions (for the sim loss)."""
        num_masks = _num_masks(sum(len(t["labels"]) for t in frame_targets), pred_logits.device)
        losses, kept = {}, []
        p_total = pred_logits.shape[0]
        for p in range(p_total):
            indices, ce, mask, dice = self.layer_losses(pred_logits[p], pred_masks[p][:, :, None], frame_targets,
                                                        num_masks)
            suffix = "" if p == p_total - 1 else f"_{p}"
            losses.update({f"loss_ce{suffix}": ce, f"loss_mask{suffix}": mask, f"loss_dice{suffix}": dice})
            if p >= p_total - keep_last:
                kept.append(indices)
        return losses, kept


class VideoCriterion(SetCriterion):
    """VITA losses on video queries: matched over the whole clip, for each frame-query copy and decoder layer."""

    def forward(self, pred_logits: torch.Tensor, pred_mask_embed: torch.Tensor, mask_features: torch.Tensor,
                targets: list[dict]) -> tuple[dict[str, torch.Tensor], Indices]:
        """pred_logits (D, L, B, cQ, K+1), pred_mask_embed (D, L, B, cQ, C), mask_features (B, T, C, h, w).
        Returns the losses and the final layer's match indices over the L*B clip copies."""
        d_total, num_copies = pred_logits.shape[0], pred_logits.shape[1]
        copies = targets * num_copies  # copy l*B + b is video b
        num_masks = _num_masks(sum(len(t["labels"]) for t in copies), pred_logits.device)
        features = mask_features.repeat(num_copies, 1, 1, 1, 1)  # (L*B, T, C, h, w)
        losses, last = {}, []
        for d in range(d_total):
            logits = pred_logits[d].flatten(0, 1)  # (L*B, cQ, K+1)
            masks = torch.einsum("nqc,ntchw->nqthw", pred_mask_embed[d].flatten(0, 1), features)
            indices, ce, mask, dice = self.layer_losses(logits, masks, copies, num_masks)
            suffix = "" if d == d_total - 1 else f"_{d}"
            losses.update({f"loss_vita_ce{suffix}": ce, f"loss_vita_mask{suffix}": mask,
                           f"loss_vita_dice{suffix}": dice})
            last = indices
        return losses, last


def similarity_loss(fq_embed: torch.Tensor, cq_embed: torch.Tensor, frame_indices: list[Indices],
                    frame_targets: list[dict], clip_indices: Indices, targets: list[dict]) -> torch.Tensor:
    """BCE on raw dot products between matched frame tokens and matched video queries: positive when they
    belong to the same instance, counted only between tokens of the same clip copy (official `loss_fg_sim`).

    fq_embed (L, B, T, fQ, C); cq_embed (L, B, cQ, C); frame_indices: L lists of B*T (src, tgt) matches of the
    last L frame predictions; clip_indices: L*B matches of the final VITA layer.
    """
    num_copies, b, t = fq_embed.shape[:3]
    tokens, ids, copy = [], [], []
    for l, per_frame in enumerate(frame_indices):
        for i, (src, tgt) in enumerate(per_frame):  # i = b * T + t
            tokens.append(fq_embed[l, i // t, i % t][src.to(fq_embed.device)])
            ids.append(frame_targets[i]["ids"][tgt.to(fq_embed.device)])
            copy.append(torch.full((len(src),), l * b + i // t, device=fq_embed.device))
    for n, (src, tgt) in enumerate(clip_indices):  # n = l * B + b
        tokens.append(cq_embed[n // b, n % b][src.to(cq_embed.device)])
        ids.append(targets[n % b]["ids"][tgt.to(cq_embed.device)])
        copy.append(torch.full((len(src),), n, device=cq_embed.device))
    tokens, ids, copy = torch.cat(tokens), torch.cat(ids), torch.cat(copy)
    if tokens.shape[0] == 0:
        return fq_embed.sum() * 0.0 + cq_embed.sum() * 0.0
    logits = tokens.float() @ tokens.float().T
    same_copy = (copy[:, None] == copy[None]).float()
    same_instance = ((ids[:, None] == ids[None]) & (same_copy > 0)).float()
    loss = F.binary_cross_entropy_with_logits(logits, same_instance, reduction="none") * same_copy
    return loss.sum() / (same_copy.sum() + 1e-6)


def frame_targets_from_clips(targets: list[dict]) -> list[dict]:
    """Video targets (labels, ids, masks (G, T, H, W), valid (G, T)) -> B*T frame targets (video-major) of the
    instances present in each frame, masks (G_t, 1, H, W)."""
    frames = []
    for target in targets:
        for t in range(target["valid"].shape[1]):
            keep = target["valid"][:, t]
            frames.append({"labels": target["labels"][keep], "ids": target["ids"][keep],
                           "masks": target["masks"][keep, t][:, None]})
    return frames


class VitaLoss(nn.Module):
    """All of VITA's losses: forward(frame_out, vita_out, mask_features, targets) -> (weighted total, losses)."""

    def __init__(self, num_classes: int, num_points: int = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, eos_coef: float = 0.1, sim_weight: float = 0.5,
                 frame_layers: int = 4, vita_layers: int = 3) -> None:
        super().__init__()
        matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        args = (num_classes, matcher, eos_coef, num_points, oversample_ratio, importance_sample_ratio)
        self.frame, self.video = FrameCriterion(*args), VideoCriterion(*args)
        self.sim_weight = sim_weight
        base = {"ce": class_weight, "mask": mask_weight, "dice": dice_weight}
        self.weight_dict: dict[str, float] = {"loss_vita_sim": sim_weight}
        for prefix, layers in (("loss_", frame_layers), ("loss_vita_", vita_layers)):
            for name, w in base.items():
                self.weight_dict[f"{prefix}{name}"] = w
                for i in range(layers - 1):
                    self.weight_dict[f"{prefix}{name}_{i}"] = w

    def forward(self, frame_out, vita_out, mask_features: torch.Tensor, targets: list[dict]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        frame_targets = frame_targets_from_clips(targets)
        num_copies = vita_out.pred_fq_embed.shape[0]
        losses, frame_indices = self.frame(frame_out.pred_logits, frame_out.pred_masks, frame_targets, num_copies)
        video_losses, clip_indices = self.video(vita_out.pred_logits, vita_out.pred_mask_embed, mask_features,
                                                targets)
        losses.update(video_losses)
        if self.sim_weight > 0:
            losses["loss_vita_sim"] = similarity_loss(vita_out.pred_fq_embed, vita_out.pred_cq_embed, frame_indices,
                                                      frame_targets, clip_indices, targets)
        missing = [k for k in losses if k not in self.weight_dict]
        if missing:
            raise KeyError(f"losses without a weight: {missing} (frame_layers/vita_layers do not match the model)")
        total = sum(self.weight_dict[k] * v for k, v in losses.items())
        return total, {k: v.detach() for k, v in losses.items()}


def build_criterion(num_classes: int, num_points: int = 12544, frame_layers: int = 10, vita_layers: int = 3,
                    **kwargs) -> VitaLoss:
    """frame_layers = frame-decoder layers + 1 predictions; vita_layers = VITA decoder layers."""
    return VitaLoss(num_classes, num_points, frame_layers=frame_layers, vita_layers=vita_layers, **kwargs)
