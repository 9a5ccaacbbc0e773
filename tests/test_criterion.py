"""Matcher and losses on small hand-made cases."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vita_deploy.training.criterion import VitaLoss, frame_targets_from_clips, similarity_loss
from vita_deploy.training.matcher import HungarianMatcher
from vita_deploy.training.point_sampling import point_sample

B, T, FQ, CQ, K, C, HM = 2, 3, 6, 6, 4, 8, 8  # H = 4 * HM input resolution


def make_targets(seed=0, empty_second=False):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for b in range(B):
        n = 0 if (empty_second and b == 1) else 2
        masks = torch.zeros(n, T, 4 * HM, 4 * HM, dtype=torch.bool)
        for i in range(n):
            # squares of 16 px on the 4-px grid of the 1/4-resolution predictions
            y, x = 4 * int(torch.randint(0, HM - 4, (1,), generator=g)), 4 * int(torch.randint(0, HM - 4, (1,), generator=g))
            masks[i, :, y:y + 16, x:x + 16] = True
        masks[1:, 0] = False if n > 1 else masks[1:, 0]  # the second instance is absent in frame 0
        targets.append({"labels": torch.randint(0, K, (n,), generator=g), "ids": torch.arange(n) + 10 * b,
                        "masks": masks, "valid": masks.flatten(2).any(-1)})
    return targets


def test_point_sample_is_bilinear_at_pixel_centres():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    coords = torch.tensor([[[0.5 / 4, 0.5 / 3], [1.0 / 4, 0.5 / 3], [0.5, 0.5]]])  # centre (0,0), between x0/x1, centre
    out = point_sample(x, coords)[0, 0]
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, (5 + 6) / 2]))


def test_matcher_recovers_a_permutation():
    targets = make_targets()
    matcher = HungarianMatcher(num_points=256)
    for t in targets:
        perm = torch.tensor([3, 1])  # GT 0 -> query 3, GT 1 -> query 1
        logits = torch.full((CQ, K + 1), -5.0)
        masks = torch.full((CQ, T, HM, HM), -10.0)
        for gi, q in enumerate(perm):
            logits[q, t["labels"][gi]] = 5.0
            down = F.interpolate(t["masks"][gi].float()[None], size=(HM, HM), mode="nearest")[0]
            masks[q] = down * 20 - 10
        src, tgt = matcher.match_one(logits, masks, t["labels"], t["masks"])
        assert dict(zip(tgt.tolist(), src.tolist())) == {0: 3, 1: 1}


def fake_outputs(targets, perfect: bool, requires_grad=True):
    """Model-shaped outputs; `perfect` puts the GT into queries 0..G-1 with confident logits."""
    p, d, layers = 3, 2, 3
    frame_logits = torch.randn(p, B * T, FQ, K + 1)
    frame_masks = torch.randn(p, B * T, FQ, HM, HM)
    vita_logits = torch.randn(d, layers, B, CQ, K + 1)
    embed = torch.randn(d, layers, B, CQ, C)
    features = torch.randn(B, T, C, HM, HM)
    if perfect:
        frame_logits[:] = -8.0
        frame_masks[:] = -12.0
        vita_logits[:] = -8.0
        vita_logits[..., K] = 8.0  # unmatched video queries predict no-object
        frame_logits[..., K] = 8.0
        embed[:] = 0.0
        features[:] = 0.0
        for b, t in enumerate(targets):
            for gi in range(len(t["labels"])):
                down = F.interpolate(t["masks"][gi].float()[None], size=(HM, HM), mode="nearest")[0]  # (T, HM, HM)
                vita_logits[:, :, b, gi, :] = -8.0
                vita_logits[:, :, b, gi, t["labels"][gi]] = 8.0
                embed[:, :, b, gi, gi] = 1.0
                features[b, :, gi] = down * 24 - 12
                for f in range(T):
                    if t["valid"][gi, f]:
                        frame_logits[:, b * T + f, gi, :] = -8.0
                        frame_logits[:, b * T + f, gi, t["labels"][gi]] = 8.0
                        frame_masks[:, b * T + f, gi] = down[f] * 24 - 12
    tensors = [frame_logits, frame_masks, vita_logits, embed, features]
    if requires_grad:
        for x in tensors:
            x.requires_grad_(True)
    frame_out = SimpleNamespace(pred_logits=frame_logits, pred_masks=frame_masks)
    vita_out = SimpleNamespace(pred_logits=vita_logits, pred_mask_embed=embed,
                               pred_fq_embed=torch.randn(layers, B, T, FQ, C, requires_grad=requires_grad),
                               pred_cq_embed=torch.randn(layers, B, CQ, C, requires_grad=requires_grad))
    return frame_out, vita_out, features, tensors


def loss_fn(importance: float = 0.75):
    return VitaLoss(K, num_points=256, frame_layers=3, vita_layers=2, importance_sample_ratio=importance)


def test_losses_finite_positive_and_gradients_flow():
    torch.manual_seed(0)
    targets = make_targets()
    frame_out, vita_out, features, tensors = fake_outputs(targets, perfect=False)
    crit = loss_fn()
    total, losses = crit(frame_out, vita_out, features, targets)
    assert set(losses) == set(crit.weight_dict)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    total.backward()
    for x in tensors + [vita_out.pred_fq_embed, vita_out.pred_cq_embed]:
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_perfect_predictions_cost_much_less():
    torch.manual_seed(0)
    targets = make_targets()
    crit = loss_fn(importance=0.0)  # uniform points: boundary pixels are a small share
    random_total, random_losses = crit(*fake_outputs(targets, perfect=False)[:3], targets)
    perfect_total, perfect_losses = crit(*fake_outputs(targets, perfect=True)[:3], targets)
    for key in ("loss_ce", "loss_mask", "loss_dice", "loss_vita_ce", "loss_vita_mask", "loss_vita_dice"):
        assert perfect_losses[key] < 0.3 * random_losses[key], (key, perfect_losses[key], random_losses[key])


def test_clip_without_instances():
    targets = make_targets(empty_second=True)
    frame_out, vita_out, features, _ = fake_outputs(targets, perfect=False)
    total, losses = loss_fn()(frame_out, vita_out, features, targets)
    assert torch.isfinite(total)
    assert len(frame_targets_from_clips(targets)) == B * T


def test_similarity_loss_by_hand():
    # One copy (L=1), one clip (B=1), one frame (T=1): frame token f0 (instance 5) and video query c0 (instance 5)
    # and c1 (instance 6). Pairs within the copy: all 9 (3 tokens); targets same-instance.
    fq = torch.zeros(1, 1, 1, 2, 2)
    fq[0, 0, 0, 0] = torch.tensor([1.0, 0.0])
    cq = torch.zeros(1, 1, 2, 2)
    cq[0, 0, 0] = torch.tensor([2.0, 0.0])
    cq[0, 0, 1] = torch.tensor([0.0, 1.0])
    frame_indices = [[(torch.tensor([0]), torch.tensor([0]))]]
    frame_targets = [{"ids": torch.tensor([5])}]
    clip_indices = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    targets = [{"ids": torch.tensor([5, 6])}]
    loss = similarity_loss(fq, cq, frame_indices, frame_targets, clip_indices, targets)
    tokens = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    logits = tokens @ tokens.T
    target = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]])
    bce = -(target * torch.log(torch.sigmoid(logits)) + (1 - target) * torch.log(1 - torch.sigmoid(logits)))
    assert loss.item() == pytest.approx(bce.mean().item(), rel=1e-5)
    assert math.isfinite(loss.item())
