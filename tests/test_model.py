"""Shapes of every stage, chunk invariance, windowing, and the two-graph split of the reference model."""
from __future__ import annotations

import math

import pytest
import torch

from vita_deploy.config import get_config
from vita_deploy.modeling.model import build_model
from vita_deploy.modeling.vita_head import shifted_window_bias
from vita_deploy.modeling.transformer_layers import MASK_BIAS


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(get_config("tiny")).eval()


def test_tiny_stage_shapes(tiny):
    cfg = tiny.cfg
    x = torch.randn(2, 3, 128, 192)
    feats = tiny.frame_detector.backbone(x)
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        assert feats[name].shape == (2, cfg.backbone.res2_channels * 2**i, 128 // 2**(i + 2), 192 // 2**(i + 2))
    mask_features, clip_features, multi_scale = tiny.frame_detector.pixel_decoder(feats)
    c = cfg.pixel_decoder.conv_dim
    assert mask_features.shape == clip_features.shape == (2, c, 32, 48)
    assert [tuple(m.shape) for m in multi_scale] == [(2, c, 4, 6), (2, c, 8, 12), (2, c, 16, 24)]
    fq, mf = tiny.frame_detector(x)
    assert fq.shape == (2, cfg.frame_decoder.num_queries, c) and mf.shape == (2, c, 32, 48)
    logits, embed = tiny.vita_head(fq)
    assert logits.shape == (cfg.vita.num_queries, cfg.num_classes + 1) and embed.shape == (cfg.vita.num_queries, c)


def test_tiny_training_outputs(tiny):
    cfg = tiny.cfg
    b, t = 2, 3
    frame_out, vita_out, mask_features = tiny(torch.randn(b, t, 3, 64, 96))
    p = cfg.frame_decoder.num_layers + 1
    fq, cq, c, k = cfg.frame_decoder.num_queries, cfg.vita.num_queries, cfg.vita.hidden_dim, cfg.num_classes
    assert frame_out.pred_logits.shape == (p, b * t, fq, k + 1)
    assert frame_out.pred_masks.shape == (p, b * t, fq, 16, 24)
    assert frame_out.frame_queries.shape == (3, b * t, fq, c)
    assert vita_out.pred_logits.shape == (cfg.vita.dec_layers, 3, b, cq, k + 1)
    assert vita_out.pred_mask_embed.shape == (cfg.vita.dec_layers, 3, b, cq, c)
    assert vita_out.pred_fq_embed.shape == (3, b, t, fq, c)
    assert vita_out.pred_cq_embed.shape == (3, b, cq, c)
    assert mask_features.shape == (b, t, c, 16, 24)
    # The training forward's last frame query is the inference frame query.
    with torch.no_grad():
        fq_eval, _ = tiny.frame_detector(torch.randn(1, 3, 64, 96))
    assert fq_eval.shape == (1, fq, c)


def test_r50_one_frame_360x640():
    cfg = get_config("r50")
    model = build_model(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) > 50e6
    with torch.no_grad():
        fq, mf = model.frame_detector(torch.randn(1, 3, 384, 640))  # 360x640 padded to 32
        logits, embed = model.vita_head(fq.repeat(7, 1, 1))
    assert fq.shape == (1, 100, 256) and mf.shape == (1, 256, 96, 160)
    assert logits.shape == (100, 41) and embed.shape == (100, 256)
    assert torch.isfinite(fq).all() and torch.isfinite(logits).all()


def test_detector_is_chunk_invariant(tiny):
    x = torch.randn(5, 3, 96, 128)
    with torch.no_grad():
        fq_all, mf_all = tiny.frame_detector(x)
        parts = [tiny.frame_detector(x[i:i + 2]) for i in range(0, 5, 2)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), fq_all, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), mf_all, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t", [1, 5, 6, 7, 13])
def test_vita_head_any_length(tiny, t):
    fq = torch.randn(t, tiny.cfg.frame_decoder.num_queries, tiny.cfg.vita.hidden_dim)
    with torch.no_grad():
        logits, embed = tiny.vita_head(fq)
    assert logits.shape[0] == embed.shape[0] == tiny.cfg.vita.num_queries
    assert torch.isfinite(logits).all() and torch.isfinite(embed).all()


@pytest.mark.parametrize("t", [1, 4, 7])
def test_padding_does_not_leak(tiny, t, monkeypatch):
    """Real frames' outputs do not depend on what the zero padding up to a multiple of W holds."""
    head = tiny.vita_head
    x = torch.randn(t, tiny.cfg.frame_decoder.num_queries, 1, tiny.cfg.vita.hidden_dim)
    with torch.no_grad():
        zero_padded = head.encode(x, shifted_windows=True)
        real_pad = torch.nn.functional.pad

        def noisy_pad(inp, pad, *args, **kwargs):
            out = real_pad(inp, pad, *args, **kwargs)
            out[inp.shape[0]:] = torch.randn_like(out[inp.shape[0]:]) * 10
            return out

        monkeypatch.setattr(torch.nn.functional, "pad", noisy_pad)
        noise_padded = head.encode(x, shifted_windows=True)
    torch.testing.assert_close(noise_padded, zero_padded, rtol=1e-5, atol=1e-5)


def _reference_shift_blocked(pad: list[bool], window: int) -> list[list[list[bool]]]:
    """Blocked (query, key) pairs of each shifted window, from the rules of the official code, by loops."""
    half = math.ceil(window / 2)
    t_pad = len(pad)
    rolled = [pad[(i - half) % t_pad] for i in range(t_pad)]
    nw = t_pad // window
    out = []
    for w in range(nw):
        edge = w in (0, nw - 1)
        rows = []
        for i in range(window):
            row = []
            for j in range(window):
                qi, kj = rolled[w * window + i], rolled[w * window + j]
                blocked = qi or (edge and kj) or (w == 0 and ((i < half) != (j < half)))
                row.append(blocked)
            rows.append(row)
        out.append(rows)
    return out


@pytest.mark.parametrize("t", [1, 3, 4, 6, 7, 12, 14])
def test_shifted_window_mask_matches_official_rules(t):
    window, fq = 6, 2
    t_pad = -(-t // window) * window
    pad = [i >= t for i in range(t_pad)]
    bias = shifted_window_bias(torch.tensor(pad)[None], window, fq)  # (Nw, 1, W*fQ, W*fQ)
    ref = _reference_shift_blocked(pad, window)
    for w, rows in enumerate(ref):
        for i in range(window):
            for j in range(window):
                value = bias[w, 0, i * fq, j * fq].item()
                assert value == (MASK_BIAS if rows[i][j] else 0.0), (t, w, i, j)


@pytest.mark.parametrize("t,changes", [(1, False), (2, False), (3, False), (4, True), (6, True), (7, True),
                                       (12, True)])
def test_shifted_windows_change_results(tiny, t, changes):
    """Eval-time shifted windows equal plain windows only while all real frames fit in the second half of
    the first shifted window (T <= ceil(W/2) = 3); from T = 4 on, the shift splits the video's frames."""
    head = tiny.vita_head
    x = torch.randn(t, tiny.cfg.frame_decoder.num_queries, 1, tiny.cfg.vita.hidden_dim)
    with torch.no_grad():
        plain = head.encode(x, shifted_windows=False)
        shifted = head.encode(x, shifted_windows=True)
    differ = not torch.allclose(plain, shifted, rtol=1e-5, atol=1e-6)
    assert differ == changes


def test_window_attention_is_local(tiny):
    """With plain windows, frames of different windows never interact (T=12: frames 0-5 vs 6-11)."""
    head = tiny.vita_head
    x = torch.randn(12, tiny.cfg.frame_decoder.num_queries, 1, tiny.cfg.vita.hidden_dim)
    y = x.clone()
    y[6:] = torch.randn_like(y[6:])
    with torch.no_grad():
        a = head.encode(x, shifted_windows=False)
        b = head.encode(y, shifted_windows=False)
    torch.testing.assert_close(a[:6], b[:6])
    assert not torch.allclose(a[6:], b[6:])


@pytest.mark.parametrize("seed", [0, 1])
def test_folded_frozen_batchnorm_equals_the_backbone_in_float64(seed):
    """The exporter folds FrozenBN into the convolutions (fold_frozen_batchnorm); the folded backbone must compute
    the same features as the unfolded one (float64, random non-trivial norm statistics, odd input sizes, batch 1
    and 2), and the original module must be left untouched."""
    from vita_deploy.modeling.backbone import FrozenBatchNorm2d, build_backbone, fold_frozen_batchnorm

    g = torch.Generator().manual_seed(seed)
    backbone = build_backbone(get_config("tiny").backbone).double().eval()
    norms = 0
    for m in backbone.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.weight.numel()
            m.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.5 + 1)
            m.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
            m.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
            m.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) * 3 + 1e-3)
            norms += 1
    assert norms > 0
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    folded = fold_frozen_batchnorm(backbone)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    for n, (h, w) in ((1, (37, 53)), (2, (64, 96))):
        x = torch.randn(n, 3, h, w, generator=g, dtype=torch.float64)
        ref, out = backbone(x), folded(x)
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], rtol=1e-10, atol=1e-10 * ref[k].abs().max().item())
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # original unchanged
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
