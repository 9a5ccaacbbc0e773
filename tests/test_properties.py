"""Every fast path against its plain reference (tests/references.py) on randomized inputs that reach its edges.

Each case is drawn from a seeded generator, so a failure names its seed and replays exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from references import bilinear_weights, official_chunk
from vita_deploy.pipeline.postprocess import MaskMaker, resize_matrix

# Where an instance's positive stride-4 logits lie (the mask maker upsamples only the window they reach).
PLACEMENTS = ["padding_only", "top", "bottom", "left", "right", "full", "single_cell", "one_frame", "nowhere",
              "random_blobs"]


def _case(seed: int, placement: str):
    """A random geometry (resized size padded by 0 to 31 pixels per axis, original larger or smaller, 1 to 18
    frames) and logits (k, t, h4, w4) whose positives lie as `placement` says."""
    rng = np.random.default_rng(seed)
    size = tuple(int(rng.integers(20, 150)) for _ in range(2))
    if rng.random() < 0.25:  # a resized frame that is a multiple of 32 on one axis
        axis = int(rng.integers(2))
        size = tuple(-(-s // 32) * 32 if a == axis else s for a, s in enumerate(size))
    padded = tuple(-(-s // 32) * 32 for s in size)
    feature = tuple(p // 4 for p in padded)
    orig = tuple(max(1, int(s * rng.uniform(0.4, 2.6))) for s in size)
    t = int(rng.integers(1, 19))
    k = 3
    logits = -torch.from_numpy(rng.uniform(0.2, 4.0, (k, t, *feature)))  # negative everywhere
    pos = lambda *shape: torch.from_numpy(rng.uniform(0.05, 4.0, shape))  # noqa: E731
    h4, w4 = feature
    valid_h, valid_w = -(-size[0] // 4), -(-size[1] // 4)  # stride-4 cells that overlap the resized frame
    for q in range(k):
        lq = logits[q]
        if placement == "padding_only":
            if valid_h < h4:
                lq[:, valid_h:, :] = pos(t, h4 - valid_h, w4)
            if valid_w < w4:
                lq[:, :, valid_w:] = pos(t, h4, w4 - valid_w)
        elif placement == "top":
            lq[:, :int(rng.integers(1, 4)), int(rng.integers(w4)):] = 1.0 + q
        elif placement == "bottom":  # from inside the frame through the padding rows
            start = int(rng.integers(max(0, valid_h - 3), valid_h))
            lq[:, start:, :int(rng.integers(1, w4 + 1))] = pos(t, h4 - start, 1)
        elif placement == "left":
            lq[:, int(rng.integers(h4)):, :int(rng.integers(1, 4))] = 0.5 + q
        elif placement == "right":
            start = int(rng.integers(max(0, valid_w - 3), valid_w))
            lq[:, int(rng.integers(h4)):, start:] = pos(t, 1, w4 - start)
        elif placement == "full":
            lq[:] = pos(t, h4, w4)
        elif placement == "single_cell":
            lq[int(rng.integers(t)), int(rng.integers(h4)), int(rng.integers(w4))] = float(rng.uniform(0.1, 5))
        elif placement == "one_frame":
            f = int(rng.integers(t))
            y0, x0 = int(rng.integers(h4)), int(rng.integers(w4))
            lq[f, y0:y0 + int(rng.integers(1, 6)), x0:x0 + int(rng.integers(1, 6))] = pos(1, 1, 1)
        elif placement == "random_blobs":
            lq[torch.from_numpy(rng.random((t, h4, w4)) < 0.05)] = 2.0
    # embed = identity: the mask maker's einsum hands the logits through exactly
    embed = torch.eye(k, dtype=torch.float32)
    features = logits.float().permute(1, 0, 2, 3).contiguous()  # (t, k, h4, w4)
    return embed, features, padded, size, orig


def _assert_chunk_equal(result, ref, label: str) -> None:
    k = ref.masks.shape[0]
    # Pixels whose float64 logit is within float32 rounding of 0 may land on either side: ties, not errors.
    tie = ref.logits.abs() <= 1e-5 * (1 + ref.logits.abs().amax((-1, -2), keepdim=True))
    for q in range(k):
        ours = torch.from_numpy(np.stack([mask_utils.decode(r) for r in result.rles[q]]).astype(bool))
        assert ours.shape == ref.masks[q].shape, label
        wrong = (ours != ref.masks[q]) & ~tie[q]
        assert not wrong.any(), f"{label}: instance {q}, {int(wrong.sum())} of {ours.numel()} mask pixels differ"
    score_tie = (ref.score_logits.abs() <= 1e-5).flatten(1).sum(1).double()  # hard-mask membership undecided
    den_err = (result.denominator.double() - ref.denominator).abs()
    assert (den_err <= score_tie).all(), f"{label}: hard-mask areas {result.denominator} vs {ref.denominator}"
    num_err = (result.numerator.double() - ref.numerator).abs()
    assert (num_err <= 1e-5 * ref.numerator + 0.5 * score_tie + 1e-6).all(), (
        f"{label}: mask-score sums {result.numerator} vs {ref.numerator}")


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("seed", range(6))
def test_mask_maker_equals_official_dense_step(placement, seed):
    embed, features, padded, size, orig = _case(1000 * PLACEMENTS.index(placement) + seed, placement)
    ref = official_chunk(embed, features, padded, size, orig)
    label = f"seed {seed} {placement}: padded {padded} resized {size} original {orig} t={features.shape[0]}"
    results = []
    for method in ("torch", "pycocotools"):
        result = MaskMaker(tuple(features.shape[-2:]), padded, size, orig, rle_method=method)(embed, features)
        _assert_chunk_equal(result, ref, f"{label} rle={method}")
        results.append(result)
    assert results[0].rles == results[1].rles  # device RLE == pycocotools, byte for byte


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (1, 7), (7, 1), (5, 5), (12, 48), (48, 45), (45, 90), (90, 37),
                                        (23, 301), (301, 23), (96, 360), (90, 720)])
def test_resize_matrix_equals_bilinear_formula(n_in, n_out):
    torch.testing.assert_close(resize_matrix(n_in, n_out), bilinear_weights(n_in, n_out), rtol=0, atol=1e-12)


def _edge_frames(t: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """Shapes that touch every border and move, on noise: masks reach the padding below and right of the frame."""
    import cv2

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    frames = []
    for i in range(t):
        f = base.copy()
        cv2.circle(f, (w - 1 - i % 5, h - 1), h // 3, (230, 60, 40), -1)  # bottom-right corner, cut by both edges
        cv2.rectangle(f, (0, 0), (w // 4 + i, h // 5), (40, 220, 90), -1)  # top-left
        cv2.rectangle(f, (w // 2, h - h // 6), (w - 1, h - 1), (60, 90, 230), -1)  # along the bottom edge
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def tiny_models():
    from vita_deploy.config import get_config
    from vita_deploy.loading import load_model
    from vita_deploy.modeling.model import build_model

    torch.manual_seed(0)
    return {"trained": load_model(None, "tiny"), "random": build_model(get_config("tiny")).eval()}


# (frames, height, width, chunk, mask chunk): resized sizes 160x267 (padded by 21 px), 249x160 (7 px), 160x320
# (none, and the long side capped); one-frame videos; chunks of 1 and ones that do not divide the length.
VIDEO_CASES = [(7, 90, 150, 4, 3), (1, 151, 97, 18, 5), (5, 61, 200, 1, 1), (11, 90, 150, 18, 5)]


@pytest.mark.parametrize("weights", ["trained", "random"])
@pytest.mark.parametrize("case", range(len(VIDEO_CASES)))
def test_run_video_equals_official_inference(tiny_models, weights, case):
    """`run_video` (chunked detector, windowed masks, device RLE, keep and recompute, inline and overlapped) ==
    the whole video at once through the plain official steps."""
    import dataclasses

    from references import official_video
    from vita_deploy.pipeline.inference import eager_graphs, eager_mask_features, run_video

    t, h, w, chunk, mask_chunk = VIDEO_CASES[case]
    model = tiny_models[weights]
    frames = _edge_frames(t, h, w, seed=case)
    ref = official_video(model, frames)
    cfg = dataclasses.replace(model.cfg, inference=dataclasses.replace(
        model.cfg.inference, chunk_size=chunk, interpolate_chunk_size=mask_chunk))
    # Logits within float32 rounding of the summation order (chunked vs whole-video batches) of 0 are ties.
    tie = ref.logits.abs() <= 1e-4 * ref.logits.abs().amax((-1, -2), keepdim=True).clamp_min(1.0)
    assert (~tie & ref.masks).any(), "the case should have masks to compare"
    for features, overlap in (("keep", False), ("keep", True), ("recompute", True)):
        pred = run_video(iter(frames) if features == "keep" else frames, *eager_graphs(model), cfg,
                         mask_features=eager_mask_features(model), features=features, overlap=overlap)
        label = f"{weights} case {case} {features} overlap={overlap}"
        assert pred.labels == ref.labels.tolist(), label
        torch.testing.assert_close(torch.tensor(pred.scores, dtype=torch.float64), ref.scores, rtol=1e-4, atol=1e-6,
                                   msg=label)
        for q, segs in enumerate(pred.segmentations):
            ours = torch.from_numpy(np.stack([mask_utils.decode(r) for r in segs]).astype(bool))
            wrong = (ours != ref.masks[q]) & ~tie[q]
            assert not wrong.any(), f"{label}: instance {q}: {int(wrong.sum())} mask pixels differ"


@pytest.mark.parametrize("case", [0, 1])
def test_onnxruntime_video_equals_official_inference(tiny_models, case):
    """The exported graphs of the shipped checkpoint in ONNX Runtime (keep and recompute) == the plain official
    steps in eager PyTorch, on odd-sized videos whose objects run into the padding."""
    from test_export import exported_trained
    from vita_deploy.pipeline.inference import run_video
    from vita_deploy.runtime.ort_export import ort_graphs, ort_mask_features
    from references import official_video

    t, h, w, _, _ = VIDEO_CASES[case]
    frames = _edge_frames(t, h, w, seed=case)
    ref = official_video(tiny_models["trained"], frames)
    export = exported_trained()
    graphs, mask_features = ort_graphs(export), ort_mask_features(export)
    tie = ref.logits.abs() <= 1e-3 * ref.logits.abs().amax((-1, -2), keepdim=True).clamp_min(1.0)
    for features in ("keep", "recompute"):
        pred = run_video(frames, *graphs, tiny_models["trained"].cfg, mask_features=mask_features, features=features)
        assert pred.labels == ref.labels.tolist(), features
        torch.testing.assert_close(torch.tensor(pred.scores, dtype=torch.float64), ref.scores, rtol=1e-3, atol=1e-5)
        for q, segs in enumerate(pred.segmentations):
            ours = torch.from_numpy(np.stack([mask_utils.decode(r) for r in segs]).astype(bool))
            assert not ((ours != ref.masks[q]) & ~tie[q]).any(), f"{features}: instance {q}"


@pytest.mark.parametrize("seed", range(8))
def test_device_rle_equals_pycocotools_on_random_sizes(seed):
    """`rle.encode` (torch, on the masks' device) == pycocotools, byte for byte: random sizes from 1x1, random
    densities from empty to full, column-major input as the mask maker hands it."""
    from vita_deploy.pipeline import rle

    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(1, 5)), int(rng.integers(1, 70)), int(rng.integers(1, 70))
    density = rng.choice([0.0, 0.01, 0.5, 0.99, 1.0], size=n)
    masks = rng.random((n, h, w)) < density[:, None, None]
    expected = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in expected:
        r["counts"] = r["counts"].decode("utf-8")
    t = torch.from_numpy(masks)
    assert rle.encode(t, method="torch") == expected
    assert rle.encode(t.transpose(1, 2).contiguous(), column_major=True, method="torch") == expected
    assert rle.encode(t.transpose(1, 2).contiguous(), column_major=True, method="pycocotools") == expected
