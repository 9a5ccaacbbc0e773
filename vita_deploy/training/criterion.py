"""VITA's training losses (vita_spec.md section 4).

- `FrameCriterion`: Mask2Former's per-frame losses (CE with no-object weight, point-sampled mask BCE + dice)
  on every frame prediction (deep supervision); also returns the matches of the last L predictions.
- `VideoCriterion`: VITA's clip-level losses on the video queries of every decoder layer and frame-query copy,
  plus `loss_vita_sim` on the final layer.
- `VitaLoss` / `build_criterion`: both, weighted, from the model's training outputs.

Criteria return UNWEIGHTED losses named as in the official code (aux layers suffixed `_0`, `_1`, ...) and expose
`weight_dict` with a weight for every key they can return.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vita_deploy.training.matcher import FrameMatcher, Match, VideoMatcher
from vita_deploy.training.point_sampling import point_sample, uncertain_point_coords

Reducer = Callable[[torch.Tensor], torch.Tensor]


class CriterionInputError(ValueError):
    """Model outputs or targets that do not fit the criterion."""


def sigmoid_ce_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """logits, labels (M, P) -> BCE averaged over points, summed over masks, / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """logits, labels (M, P) -> sum over masks of 1 - soft dice (+1 smoothed), / num_masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def distributed_average(count: torch.Tensor) -> torch.Tensor:
    """all_reduce-mean of a count over processes (no-op without torch.distributed); pass as `num_masks_reducer`."""
    if dist.is_available() and dist.is_initialized():
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count


def _normaliser(count: int, device: torch.device, reducer: Reducer | None) -> float:
    """Number of target masks (optionally averaged over processes), at least 1."""
    n = torch.tensor(float(count), device=device)
    if reducer is not None:
        n = reducer(n)
    return max(float(n), 1.0)


def _src_index(indices: list[Match], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(item index, prediction index) of every matched pair, to index (N, Q, ...) predictions."""
    items = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
    return items, torch.cat([src for src, _ in indices]).to(device)


class _SetLoss(nn.Module):
    """Matched classification and point-sampled mask losses shared by the frame and video criteria."""

    def __init__(self, num_classes: int, eos_coef: float, num_points: int, oversample_ratio: float,
                 importance_sample_ratio: float, num_masks_reducer: Reducer | None) -> None:
        super().__init__()
        self.num_classes, self.num_points = num_classes, num_points
        self.oversample_ratio, self.importance_sample_ratio = oversample_ratio, importance_sample_ratio
        self.num_masks_reducer = num_masks_reducer
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef  # down-weights the many unmatched "no object" predictions
        self.register_buffer("empty_weight", empty_weight)

    def class_loss(self, logits: torch.Tensor, indices: list[Match], labels: list[torch.Tensor]) -> torch.Tensor:
        """logits (N, Q, K+1); labels[i] (G_i,) -> weighted CE, unmatched predictions target no-object (K)."""
        if logits.shape[-1] != self.num_classes + 1:
            raise CriterionInputError(f"class logits have {logits.shape[-1]} classes but the criterion was built for "
                                      f"num_classes={self.num_classes} (+1 no-object)")
        target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        if indices:
            items, src = _src_index(indices, logits.device)
            target[items, src] = torch.cat([lab[tgt] for lab, (_, tgt) in zip(labels, indices)]).to(logits.device)
        return F.cross_entropy(logits.float().transpose(1, 2), target, self.empty_weight)

    def mask_losses(self, src_masks: torch.Tensor, tgt_masks: torch.Tensor, num_masks: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """src_masks (M, T, h, w) logits, tgt_masks (M, T, H, W) -> (BCE, dice) on points chosen per frame and
        concatenated per track (T * num_points values per mask)."""
        m, t = src_masks.shape[:2]
        src = src_masks.float().flatten(0, 1)[:, None]  # (M*T, 1, h, w)
        coords = uncertain_point_coords(src, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
        with torch.no_grad():
            tgt = tgt_masks.to(src.device, torch.float32).flatten(0, 1)[:, None]  # (M*T, 1, H, W)
            point_labels = point_sample(tgt, coords).view(m, t * self.num_points)
        point_logits = point_sample(src, coords).view(m, t * self.num_points)
        return sigmoid_ce_loss(point_logits, point_labels, num_masks), dice_loss(point_logits, point_labels, num_masks)


class FrameCriterion(_SetLoss):
    """Mask2Former losses on all P per-frame predictions: `loss_ce`, `loss_mask`, `loss_dice` for the last one,
    `..._p` for prediction p < P-1 (p=0 from the initial queries)."""

    def __init__(self, num_classes: int, num_predictions: int = 10, class_weight: float = 2.0,
                 mask_weight: float = 5.0, dice_weight: float = 5.0, eos_coef: float = 0.1,
                 num_points: int = 12544, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 num_masks_reducer: Reducer | None = None) -> None:
        super().__init__(num_classes, eos_coef, num_points, oversample_ratio, importance_sample_ratio,
                         num_masks_reducer)
        self.num_predictions = num_predictions
        self.matcher = FrameMatcher(class_weight, mask_weight, dice_weight, num_points)
        base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.weight_dict = dict(base)
        for p in range(num_predictions - 1):
            self.weight_dict.update({f"{k}_{p}": w for k, w in base.items()})

    def forward(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, frame_targets: list[dict],
                num_last: int = 3) -> tuple[dict[str, torch.Tensor], list[list[Match]]]:
        """pred_logits (P, N, Q, K+1), pred_masks (P, N, Q, h, w); frame_targets: N dicts, labels (G,), masks
        (G, H, W). Returns the losses and the matches of the last `num_last` predictions (oldest first)."""
        p_total, n = pred_logits.shape[:2]
        if p_total != self.num_predictions or pred_masks.shape[:3] != pred_logits.shape[:3] or len(frame_targets) != n:
            raise CriterionInputError(
                f"frame outputs pred_logits {tuple(pred_logits.shape)}, pred_masks {tuple(pred_masks.shape)} with "
                f"{len(frame_targets)} frame targets; the criterion expects P={self.num_predictions} predictions "
                f"(build it with frame_layers = decoder layers + 1) and one target per frame")
        num_masks = _normaliser(sum(len(t["labels"]) for t in frame_targets), pred_logits.device,
                                self.num_masks_reducer)
        labels = [t["labels"] for t in frame_targets]
        losses, kept = {}, []
        for p in range(p_total):
            indices = self.matcher(pred_logits[p], pred_masks[p], frame_targets)
            suffix = "" if p == p_total - 1 else f"_{p}"
            losses[f"loss_ce{suffix}"] = self.class_loss(pred_logits[p], indices, labels)
            items, src = _src_index(indices, pred_masks.device)
            if src.numel() == 0:  # no instance in any frame: zero, but keep the graph
                mask_loss = dice = pred_masks[p].sum() * 0.0
            else:
                tgt = torch.cat([t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(frame_targets, indices)])
                mask_loss, dice = self.mask_losses(pred_masks[p][items, src][:, None], tgt[:, None], num_masks)
            losses[f"loss_mask{suffix}"], losses[f"loss_dice{suffix}"] = mask_loss, dice
            if p >= p_total - num_last:
                kept.append(indices)
        return losses, kept


class VideoCriterion(_SetLoss):
    """VITA losses on the video queries of each of the D decoder layers (`loss_vita_ce/mask/dice`, aux layers
    suffixed `_0` .. `_{D-2}`), each frame-query copy matched on its own, and `loss_vita_sim` on the last layer."""

    def __init__(self, num_classes: int, num_layers: int = 3, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, eos_coef: float = 0.1, sim_weight: float = 0.5,
                 num_points: int = 12544, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 sim_use_clip: bool = True, num_masks_reducer: Reducer | None = None) -> None:
        super().__init__(num_classes, eos_coef, num_points, oversample_ratio, importance_sample_ratio,
                         num_masks_reducer)
        self.num_layers, self.sim_weight, self.sim_use_clip = num_layers, sim_weight, sim_use_clip
        self.matcher = VideoMatcher(class_weight, mask_weight, dice_weight, num_points)
        base = {"loss_vita_ce": class_weight, "loss_vita_mask": mask_weight, "loss_vita_dice": dice_weight}
        self.weight_dict = dict(base)
        for d in range(num_layers - 1):
            self.weight_dict.update({f"{k}_{d}": w for k, w in base.items()})
        if sim_weight > 0:
            self.weight_dict["loss_vita_sim"] = sim_weight

    def forward(self, pred_logits: torch.Tensor, pred_mask_embed: torch.Tensor, mask_features: torch.Tensor,
                targets: list[dict], pred_fq_embed: torch.Tensor | None = None,
                pred_cq_embed: torch.Tensor | None = None, frame_targets: list[dict] | None = None,
                frame_indices: list[list[Match]] | None = None) -> tuple[dict[str, torch.Tensor], list[Match]]:
        """pred_logits (D, L, B, cQ, K+1), pred_mask_embed (D, L, B, cQ, C), mask_features (B, T, C, h, w);
        targets: B dicts, labels (G,), ids (G,), masks (G, T, H, W). The similarity loss needs pred_fq_embed
        (L, B, T, fQ, C), pred_cq_embed (L, B, cQ, C), the B*T frame targets and the frame matches of the last L
        frame predictions. Returns the losses and the final layer's L*B matches (copy l*B + b)."""
        d_total, num_copies, b = pred_logits.shape[:3]
        if d_total != self.num_layers or pred_mask_embed.shape[:4] != pred_logits.shape[:4] or len(targets) != b:
            raise CriterionInputError(
                f"VITA outputs pred_logits {tuple(pred_logits.shape)}, pred_mask_embed {tuple(pred_mask_embed.shape)}"
                f" with {len(targets)} targets; the criterion expects D={self.num_layers} decoder layers "
                f"(build it with vita_layers = VITA decoder layers) and one target per video")
        copies = targets * num_copies  # copy n = l*B + b is video b
        num_masks = _normaliser(sum(len(t["labels"]) for t in copies), pred_logits.device, self.num_masks_reducer)
        labels = [t["labels"] for t in copies]
        losses: dict[str, torch.Tensor] = {}
        indices: list[Match] = []
        for d in range(d_total):
            indices = self.matcher(pred_logits[d], pred_mask_embed[d], mask_features, targets)
            suffix = "" if d == d_total - 1 else f"_{d}"
            losses[f"loss_vita_ce{suffix}"] = self.class_loss(pred_logits[d].flatten(0, 1), indices, labels)
            embeds = pred_mask_embed[d].flatten(0, 1)  # (L*B, cQ, C)
            src_masks, tgt_masks = [], []
            for n, (src, tgt) in enumerate(indices):
                if len(src):  # only matched queries need masks: (m, C) x (T, C, h, w) -> (m, T, h, w)
                    src_masks.append(torch.einsum("mc,tchw->mthw", embeds[n, src.to(embeds.device)].float(),
                                                  mask_features[n % b].float()))
                    tgt_masks.append(copies[n]["masks"][tgt.to(copies[n]["masks"].device)])
            if not src_masks:  # no instance in any clip
                mask_loss = dice = pred_mask_embed[d].sum() * 0.0 + mask_features.sum() * 0.0
            else:
                mask_loss, dice = self.mask_losses(torch.cat(src_masks), torch.cat(tgt_masks), num_masks)
            losses[f"loss_vita_mask{suffix}"], losses[f"loss_vita_dice{suffix}"] = mask_loss, dice
        if self.sim_weight > 0 and pred_fq_embed is not None and frame_indices is not None:
            if pred_cq_embed is None or frame_targets is None:
                raise CriterionInputError("loss_vita_sim needs pred_cq_embed and frame_targets with the frame matches")
            losses["loss_vita_sim"] = similarity_loss(pred_fq_embed, pred_cq_embed, frame_indices, frame_targets,
                                                      indices if self.sim_use_clip else None, targets)
        return losses, indices


def similarity_loss(fq_embed: torch.Tensor, cq_embed: torch.Tensor, frame_indices: list[list[Match]],
                    frame_targets: list[dict], clip_indices: list[Match] | None, targets: list[dict]) -> torch.Tensor:
    """VITA `loss_fg_sim`: BCE-with-logits between the raw dot products of all matched tokens (frame tokens from
    the frame matcher, video queries from the VITA matcher) and "same instance id", over pairs of tokens of the
    same clip copy (l, b) only, self-pairs included; mean over those pairs.

    fq_embed (L, B, T, fQ, C); cq_embed (L, B, cQ, C); frame_indices: L lists of B*T matches (copy l = frame
    prediction P-L+l); frame_targets: B*T dicts with ids; clip_indices: L*B matches (None: frame tokens only).
    """
    num_copies, b, t = fq_embed.shape[:3]
    if len(frame_indices) != num_copies or any(len(m) != b * t for m in frame_indices):
        raise CriterionInputError(f"need {num_copies} lists of {b * t} frame matches for pred_fq_embed "
                                  f"{tuple(fq_embed.shape)}; got {[len(m) for m in frame_indices]}")
    device = fq_embed.device
    flat_frames = [m for per_copy in frame_indices for m in per_copy]  # index (l*B + b)*T + t
    items, src = _src_index(flat_frames, device)
    tokens = [fq_embed.flatten(0, 2)[items, src]]  # (Nf, C)
    ids = [torch.cat([frame_targets[i % (b * t)]["ids"][j] for i, (_, j) in enumerate(flat_frames)]).to(device)]
    copy = [torch.div(items, t, rounding_mode="floor")]  # l*B + b
    if clip_indices is not None:
        items, src = _src_index(clip_indices, device)
        tokens.append(cq_embed.flatten(0, 1)[items, src])  # (Nc, C)
        ids.append(torch.cat([targets[n % b]["ids"][j] for n, (_, j) in enumerate(clip_indices)]).to(device))
        copy.append(items)
    tok, ident, cp = torch.cat(tokens).float(), torch.cat(ids), torch.cat(copy)
    if tok.shape[0] == 0:  # nothing matched anywhere: zero, but keep the graph
        return fq_embed.sum() * 0.0 + cq_embed.sum() * 0.0
    logits = tok @ tok.T  # raw dot products, no normalisation or temperature
    same_copy = (cp[:, None] == cp[None]).float()
    same_id = (ident[:, None] == ident[None]).float() * same_copy
    loss = F.binary_cross_entropy_with_logits(logits, same_id, reduction="none") * same_copy
    return loss.sum() / (same_copy.sum() + 1e-6)


def frame_targets_from_clips(targets: list[dict]) -> list[dict]:
    """Clip targets (labels (G,), ids (G,), masks (G, T, H, W), valid (G, T)) -> B*T frame targets, video-major,
    of the instances valid in each frame: labels (G_t,), ids (G_t,), masks (G_t, H, W)."""
    frames = []
    for k, target in enumerate(targets):
        missing = {"labels", "ids", "masks", "valid"} - set(target)
        if missing:
            raise CriterionInputError(f"target {k} lacks {sorted(missing)}: each clip target needs labels, ids, "
                                      f"masks (G, T, H, W) and valid (G, T)")
        masks, valid = target["masks"], target["valid"].bool()
        g = len(target["labels"])
        if masks.dim() != 4 or masks.shape[0] != g or valid.shape != masks.shape[:2] or len(target["ids"]) != g:
            raise CriterionInputError(f"target {k}: labels ({g},), ids {tuple(target['ids'].shape)}, masks "
                                      f"{tuple(masks.shape)} and valid {tuple(valid.shape)} disagree; expected "
                                      f"(G,), (G,), (G, T, H, W), (G, T)")
        for f in range(masks.shape[1]):
            keep = valid[:, f]
            frames.append({"labels": target["labels"][keep], "ids": target["ids"][keep], "masks": masks[keep, f]})
    return frames


class VitaLoss(nn.Module):
    """All of VITA's losses: forward(frame_out, vita_out, mask_features, targets) -> (weighted total, losses)."""

    def __init__(self, frame: FrameCriterion, video: VideoCriterion) -> None:
        super().__init__()
        self.frame, self.video = frame, video
        self.weight_dict = {**frame.weight_dict, **video.weight_dict}

    def forward(self, frame_out, vita_out, mask_features: torch.Tensor, targets: list[dict]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """frame_out: pred_logits (P, B*T, fQ, K+1), pred_masks (P, B*T, fQ, h, w); vita_out: pred_logits,
        pred_mask_embed, pred_fq_embed, pred_cq_embed (see VideoCriterion); mask_features (B, T, C, h, w);
        targets: B clip dicts. Returns the weighted sum and the unweighted losses, detached."""
        b, t = mask_features.shape[:2]
        if len(targets) != b or frame_out.pred_logits.shape[1] != b * t:
            raise CriterionInputError(f"{len(targets)} targets and {frame_out.pred_logits.shape[1]} frames for "
                                      f"mask_features of B={b}, T={t}: need B targets and B*T frames (video-major)")
        frame_targets = frame_targets_from_clips(targets)
        num_copies = vita_out.pred_fq_embed.shape[0]
        losses, frame_indices = self.frame(frame_out.pred_logits, frame_out.pred_masks, frame_targets, num_copies)
        video_losses, _ = self.video(vita_out.pred_logits, vita_out.pred_mask_embed, mask_features, targets,
                                     vita_out.pred_fq_embed, vita_out.pred_cq_embed, frame_targets, frame_indices)
        losses.update(video_losses)
        total = sum(self.weight_dict[k] * v for k, v in losses.items())
        return total, {k: v.detach() for k, v in losses.items()}


def build_criterion(num_classes: int, num_points: int = 12544, frame_layers: int = 10, vita_layers: int = 3,
                    class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                    eos_coef: float = 0.1, sim_weight: float = 0.5, oversample_ratio: float = 3.0,
                    importance_sample_ratio: float = 0.75, num_masks_reducer: Reducer | None = None) -> VitaLoss:
    """VITA's losses with the official defaults. frame_layers = P = frame-decoder layers + 1 predictions;
    vita_layers = D = VITA decoder layers. num_masks_reducer=distributed_average averages the mask count over
    processes like the official code (default: local count)."""
    common = dict(class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight, eos_coef=eos_coef,
                  num_points=num_points, oversample_ratio=oversample_ratio,
                  importance_sample_ratio=importance_sample_ratio, num_masks_reducer=num_masks_reducer)
    return VitaLoss(FrameCriterion(num_classes, frame_layers, **common),
                    VideoCriterion(num_classes, vita_layers, sim_weight=sim_weight, **common))
