"""Point sampling, Hungarian matchers and VITA's losses on small hand-made cases (CPU, seconds)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vita_deploy.training.criterion import (CriterionInputError, VideoCriterion, build_criterion,
                                            frame_targets_from_clips, similarity_loss)
from vita_deploy.training.matcher import FrameMatcher, VideoMatcher
from vita_deploy.training.point_sampling import point_sample, uncertain_point_coords

B, T, FQ, CQ, K, C, HM = 2, 3, 8, 8, 4, 16, 16  # input 64 x 64, masks at 1/4
P_FRAME, D_VITA, L = 4, 2, 3  # frame predictions, VITA decoder layers, frame-query copies
NUM_POINTS = 64
BIG = 12.0  # logit magnitude of "perfect" predictions


def make_targets(empty_videos: tuple[int, ...] = ()) -> list[dict]:
    """Video 0: 3 instances (instance 1 absent in frame 1); video 1: 2 instances. Rectangles on the 4-px grid."""
    boxes = [[(0, 0, 16, 24), (32, 8, 60, 28), (12, 36, 40, 64)], [(4, 4, 36, 20), (40, 40, 64, 64)]]
    targets = []
    for b, video in enumerate(boxes):
        if b in empty_videos:
            video = []
        masks = torch.zeros(len(video), T, 64, 64, dtype=torch.bool)
        for g, (y0, x0, y1, x1) in enumerate(video):
            for t in range(T):
                masks[g, t, y0 + 4 * t:y1 + 4 * t, x0:x1] = True  # moves down 4 px per frame
        if b == 0 and video:
            masks[1, 1] = False
        targets.append({"labels": torch.tensor([(b + g) % K for g in range(len(video))], dtype=torch.int64),
                        "ids": torch.tensor([10 * b + g + 3 for g in range(len(video))], dtype=torch.int64),
                        "masks": masks, "valid": masks.flatten(2).any(-1)})
    return targets


def down(masks: torch.Tensor) -> torch.Tensor:
    """(..., 64, 64) bool -> (..., HM, HM) logits of +-BIG (exact: boxes lie on the 4-px grid)."""
    small = F.interpolate(masks.float().reshape(-1, 1, 64, 64), size=(HM, HM), mode="nearest")[:, 0]
    return (small * 2 - 1).view(*masks.shape[:-2], HM, HM) * BIG


def onehot_logits(label: int) -> torch.Tensor:
    out = torch.full((K + 1,), -BIG)
    out[label] = BIG
    return out


def fake_outputs(targets: list[dict], perfect: bool, seed: int = 0):
    """Model-shaped training outputs. `perfect`: GT g of a video sits in query g with confident logits and masks,
    unmatched queries say no-object, and similarity embeddings of different instances point 120 degrees apart."""
    g = torch.Generator().manual_seed(seed)
    frame_logits = torch.randn(P_FRAME, B * T, FQ, K + 1, generator=g)
    frame_masks = torch.randn(P_FRAME, B * T, FQ, HM, HM, generator=g)
    vita_logits = torch.randn(D_VITA, L, B, CQ, K + 1, generator=g)
    embed = torch.randn(D_VITA, L, B, CQ, C, generator=g)
    features = torch.randn(B, T, C, HM, HM, generator=g)
    fq_embed = torch.randn(L, B, T, FQ, C, generator=g)
    cq_embed = torch.randn(L, B, CQ, C, generator=g)
    if perfect:
        frame_logits[:], frame_masks[:] = onehot_logits(K), -BIG
        vita_logits[:], embed[:], features[:] = onehot_logits(K), 0.0, 0.0
        fq_embed[:], cq_embed[:] = 0.0, 0.0
        for b, tgt in enumerate(targets):
            for gi, label in enumerate(tgt["labels"].tolist()):
                angle = 2 * math.pi * gi / 3
                sim = torch.zeros(C)
                sim[:2] = 6.0 * torch.tensor([math.cos(angle), math.sin(angle)])
                vita_logits[:, :, b, gi] = onehot_logits(label)
                embed[:, :, b, gi, gi] = 1.0
                features[b, :, gi] = down(tgt["masks"][gi])
                cq_embed[:, b, gi] = sim
                for t in range(T):
                    if tgt["valid"][gi, t]:
                        frame_logits[:, b * T + t, gi] = onehot_logits(label)
                        frame_masks[:, b * T + t, gi] = down(tgt["masks"][gi, t])
                        fq_embed[:, b, t, gi] = sim
    tensors = [frame_logits, frame_masks, vita_logits, embed, features, fq_embed, cq_embed]
    for x in tensors:
        x.requires_grad_(True)
    frame_out = SimpleNamespace(pred_logits=frame_logits, pred_masks=frame_masks)
    vita_out = SimpleNamespace(pred_logits=vita_logits, pred_mask_embed=embed, pred_fq_embed=fq_embed,
                               pred_cq_embed=cq_embed)
    return frame_out, vita_out, features, tensors


def criterion(**kwargs):
    return build_criterion(K, num_points=NUM_POINTS, frame_layers=P_FRAME, vita_layers=D_VITA, **kwargs)


def test_point_sample_matches_manual_bilinear():
    x = torch.arange(12.0).view(1, 1, 3, 4) ** 2  # non-linear values so the weights matter
    coords = torch.tensor([[[0.3, 0.6], [0.5 / 4, 0.5 / 3]]])  # (x, y) in [0, 1]
    out = point_sample(x, coords)[0, 0]
    px, py = 0.3 * 4 - 0.5, 0.6 * 3 - 0.5  # pixel coordinates with centres at integers: (0.7, 1.3)
    v = x[0, 0]
    manual = ((1 - 0.3) * ((1 - 0.7) * v[1, 0] + 0.7 * v[1, 1]) + 0.3 * ((1 - 0.7) * v[2, 0] + 0.7 * v[2, 1]))
    assert (px, py) == pytest.approx((0.7, 1.3))
    assert out[0].item() == pytest.approx(manual.item(), rel=1e-5)
    assert out[1].item() == pytest.approx(0.0, abs=1e-6)  # exactly the centre of pixel (0, 0)


def test_uncertain_points_pick_the_decision_boundary():
    torch.manual_seed(0)
    logits = torch.full((2, 1, 16, 16), -10.0)
    logits[..., 8:] = 10.0  # boundary at x = 0.5: |logit| < 10 only for x in (7.5/16, 8.5/16) ...
    # ... and within half a pixel of the image border, where grid_sample pads with zeros (as detectron2 does)
    coords = uncertain_point_coords(logits, num_points=10, oversample_ratio=20, importance_sample_ratio=1.0)
    assert coords.shape == (2, 10, 2)
    assert (point_sample(logits, coords).abs() < 9.99).all()
    uniform = torch.rand(2, 1000, 2)
    assert (point_sample(logits, uniform).abs() < 9.99).float().mean() < 0.3  # uncertain points are rare
    mixed = uncertain_point_coords(logits, num_points=40, importance_sample_ratio=0.75)
    assert mixed.shape == (2, 40, 2) and mixed.min() >= 0 and mixed.max() <= 1


def test_frame_matcher_recovers_permutation():
    torch.manual_seed(0)
    frames = frame_targets_from_clips(make_targets())
    matcher = FrameMatcher(num_points=NUM_POINTS)
    perm = [5, 2, 7]  # GT g -> query perm[g]
    logits = torch.stack([torch.stack([onehot_logits(K)] * FQ)] * len(frames))
    masks = torch.full((len(frames), FQ, HM, HM), -BIG)
    for i, f in enumerate(frames):
        for gi, label in enumerate(f["labels"].tolist()):
            logits[i, perm[gi]] = onehot_logits(label)
            masks[i, perm[gi]] = down(f["masks"][gi])
    for i, (src, tgt) in enumerate(matcher(logits, masks, frames)):
        assert src.dtype == tgt.dtype == torch.int64
        assert dict(zip(tgt.tolist(), src.tolist())) == {g: perm[g] for g in range(len(frames[i]["labels"]))}
    assert [len(frames[i]["labels"]) for i in range(T)] == [3, 2, 3]  # frame 1 of video 0 lacks instance 1


def test_video_matcher_matches_each_copy_separately():
    torch.manual_seed(0)
    targets = make_targets()
    logits = onehot_logits(K).repeat(L, B, CQ, 1)
    embed = torch.zeros(L, B, CQ, C)
    features = torch.zeros(B, T, C, HM, HM)
    for b, tgt in enumerate(targets):
        for gi, label in enumerate(tgt["labels"].tolist()):
            features[b, :, gi] = down(tgt["masks"][gi])
            for l in range(L):
                q = (gi + 2 * l) % CQ  # a different query per copy
                logits[l, b, q] = onehot_logits(label)
                embed[l, b, q, gi] = 1.0
    matches = VideoMatcher(num_points=NUM_POINTS)(logits, embed, features, targets)
    assert len(matches) == L * B
    for n, (src, tgt) in enumerate(matches):
        l, b = divmod(n, B)
        assert dict(zip(tgt.tolist(), src.tolist())) == {g: (g + 2 * l) % CQ for g in range(len(targets[b]["labels"]))}


def test_random_losses_finite_positive_covered_and_gradients_flow():
    torch.manual_seed(0)
    targets = make_targets()
    frame_out, vita_out, features, tensors = fake_outputs(targets, perfect=False)
    crit = criterion()
    total, losses = crit(frame_out, vita_out, features, targets)
    assert set(losses) == set(crit.weight_dict)
    assert len(losses) == 3 * P_FRAME + 3 * D_VITA + 1
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in losses.values())
    manual_total = sum(crit.weight_dict[k] * float(v) for k, v in losses.items())
    assert float(total.detach()) == pytest.approx(manual_total, rel=1e-5)
    total.backward()
    frame_logits, frame_masks, vita_logits, embed, features, fq_embed, cq_embed = tensors
    for x in tensors:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # deep supervision reaches every frame prediction and every VITA layer; the sim loss every copy
    assert all(frame_logits.grad[p].abs().sum() > 0 and frame_masks.grad[p].abs().sum() > 0 for p in range(P_FRAME))
    assert all(vita_logits.grad[d].abs().sum() > 0 and embed.grad[d].abs().sum() > 0 for d in range(D_VITA))
    assert all(fq_embed.grad[l].abs().sum() > 0 and cq_embed.grad[l].abs().sum() > 0 for l in range(L))


def test_perfect_predictions_cost_much_less_than_random():
    targets = make_targets()
    crit = criterion()
    torch.manual_seed(0)
    random_total, random_losses = crit(*fake_outputs(targets, perfect=False)[:3], targets)
    torch.manual_seed(0)
    perfect_total, perfect_losses = crit(*fake_outputs(targets, perfect=True)[:3], targets)
    assert float(perfect_total.detach()) < 0.1 * float(random_total.detach())
    for key in ("loss_ce", "loss_mask", "loss_dice", "loss_vita_ce", "loss_vita_mask", "loss_vita_dice",
                "loss_vita_sim"):
        assert perfect_losses[key] < 0.2 * random_losses[key], (key, perfect_losses[key], random_losses[key])


def test_clip_without_instances_and_batch_without_any():
    for empty in ((1,), (0, 1)):
        targets = make_targets(empty_videos=empty)
        frame_out, vita_out, features, tensors = fake_outputs(targets, perfect=False)
        total, losses = criterion()(frame_out, vita_out, features, targets)
        assert torch.isfinite(total) and all(math.isfinite(float(v)) for v in losses.values())
        assert losses["loss_ce"] > 0 and losses["loss_vita_ce"] > 0  # everything must say "no object"
        if empty == (0, 1):
            assert float(losses["loss_vita_mask"]) == 0.0 and float(losses["loss_vita_sim"]) == 0.0
        total.backward()
        assert all(torch.isfinite(x.grad).all() for x in tensors if x.grad is not None)


def test_num_masks_is_gt_times_copies_and_reducer_hook():
    targets = make_targets()
    _, vita_out, features, _ = fake_outputs(targets, perfect=False)
    args = (vita_out.pred_logits, vita_out.pred_mask_embed, features, targets)
    plain = VideoCriterion(K, num_layers=D_VITA, num_points=NUM_POINTS)
    doubled = VideoCriterion(K, num_layers=D_VITA, num_points=NUM_POINTS, num_masks_reducer=lambda n: 2 * n)
    with torch.no_grad():
        torch.manual_seed(1)
        a, _ = plain(*args)
        torch.manual_seed(1)
        b, _ = doubled(*args)
    assert float(b["loss_vita_ce"]) == pytest.approx(float(a["loss_vita_ce"]))
    assert float(b["loss_vita_mask"]) == pytest.approx(0.5 * float(a["loss_vita_mask"]), rel=1e-5)
    assert float(b["loss_vita_dice"]) == pytest.approx(0.5 * float(a["loss_vita_dice"]), rel=1e-5)
    # dice of one matched track is at most 1, so the sum over (G=5) x (L=3) tracks / num_masks is at most 1
    assert 0 < float(a["loss_vita_dice"]) <= 1.0


def test_similarity_loss_by_hand():
    # L=2 copies, B=1 clip, T=1 frame, fQ=cQ=2, C=2. Copy 0: frame query 1 -> id 7; video queries 0 -> id 9,
    # 1 -> id 7. Copy 1: frame query 0 -> id 9; video query 1 -> id 9. Pairs across copies do not count.
    fq = torch.tensor([[[[[0.0, 0.0], [1.0, 2.0]]]], [[[[-1.0, 0.5], [0.0, 0.0]]]]])  # (2, 1, 1, 2, 2)
    cq = torch.tensor([[[[0.5, -1.0], [2.0, 1.0]]], [[[0.0, 0.0], [1.5, 0.5]]]])  # (2, 1, 2, 2)
    frame_targets = [{"ids": torch.tensor([7, 9])}]
    frame_indices = [[(torch.tensor([1]), torch.tensor([0]))], [(torch.tensor([0]), torch.tensor([1]))]]
    clip_indices = [(torch.tensor([0, 1]), torch.tensor([1, 0])), (torch.tensor([1]), torch.tensor([1]))]
    targets = [{"ids": torch.tensor([7, 9])}]
    loss = similarity_loss(fq, cq, frame_indices, frame_targets, clip_indices, targets)
    copies = [[([1.0, 2.0], 7), ([0.5, -1.0], 9), ([2.0, 1.0], 7)], [([-1.0, 0.5], 9), ([1.5, 0.5], 9)]]
    terms = []
    for tokens in copies:
        for u, iu in tokens:
            for v, iv in tokens:
                z = u[0] * v[0] + u[1] * v[1]
                y = 1.0 if iu == iv else 0.0
                p = 1 / (1 + math.exp(-z))
                terms.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    assert len(terms) == 9 + 4
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_bad_inputs_raise_clear_errors():
    targets = make_targets()
    frame_out, vita_out, features, _ = fake_outputs(targets, perfect=False)
    wrong_layers = build_criterion(K, num_points=NUM_POINTS, frame_layers=10, vita_layers=D_VITA)
    with pytest.raises(CriterionInputError, match="frame_layers"):
        wrong_layers(frame_out, vita_out, features, targets)
    del targets[0]["valid"]
    with pytest.raises(CriterionInputError, match="valid"):
        criterion()(frame_out, vita_out, features, targets)
