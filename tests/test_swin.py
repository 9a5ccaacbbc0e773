"""Swin backbone against slow, independent reconstructions of Mask2Former's `D2SwinTransformer`.

The references below loop over tokens and windows, build the shifted-window mask by the official slice
assignment, pad with explicit zero tensors, roll with torch.roll and compute attention head by head, so they
share nothing with `vita_deploy.modeling.swin` but the parameters.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from official_zoo_keys import official_keys, swin_backbone_keys
from vita_deploy.config import SwinConfig, get_config
from vita_deploy.modeling.checkpoint import to_official_key
from vita_deploy.modeling.model import build_model
from vita_deploy.modeling.swin import (SwinTransformer, relative_position_index, shifted_window_mask,
                                       window_partition, window_reverse)

NARROW = SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=7)


# ---------------------------------------------------------------- slow references
def slow_relative_index(ws: int) -> torch.Tensor:
    idx = torch.empty(ws * ws, ws * ws, dtype=torch.long)
    for i in range(ws * ws):
        yi, xi = divmod(i, ws)
        for j in range(ws * ws):
            yj, xj = divmod(j, ws)
            idx[i, j] = (yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1)
    return idx


def slow_windows(x: torch.Tensor, ws: int) -> list[torch.Tensor]:
    """(N, H, W, C) -> windows in the official order: image, window row, window column."""
    n, h, w, _ = x.shape
    return [x[b, r * ws:(r + 1) * ws, c * ws:(c + 1) * ws] for b in range(n) for r in range(h // ws)
            for c in range(w // ws)]


def slow_mask(hp: int, wp: int, ws: int, shift: int) -> torch.Tensor:
    """The official recipe: label 9 regions by slice assignment, mask pairs of different labels with -100."""
    img = torch.zeros(hp, wp)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[hs, wsl] = cnt
            cnt += 1
    wins = [win.reshape(-1) for win in slow_windows(img[None, :, :, None], ws)]
    mask = torch.zeros(len(wins), ws * ws, ws * ws)
    for k, lab in enumerate(wins):
        for i in range(ws * ws):
            for j in range(ws * ws):
                if lab[i] != lab[j]:
                    mask[k, i, j] = -100.0
    return mask


def ln(x: torch.Tensor, norm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def slow_block(blk, x: torch.Tensor) -> torch.Tensor:
    n, h, w, c = x.shape
    ws, s = blk.window_size, blk.shift_size
    heads = blk.attn.num_heads
    d = c // heads
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    y = torch.zeros(n, hp, wp, c)
    y[:, :h, :w] = ln(x, blk.norm1)  # padded tokens are zeros after the norm
    if s:
        y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
    mask = slow_mask(hp, wp, ws, s) if s else None
    index = slow_relative_index(ws)
    table = blk.attn.relative_position_bias_table
    out = torch.zeros_like(y)
    per_image = (hp // ws) * (wp // ws)
    for k, win in enumerate(slow_windows(y, ws)):
        b, r = divmod(k, per_image)
        row, col = divmod(r, wp // ws)
        tokens = win.reshape(ws * ws, c)
        qkv = tokens @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        q, kk, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        head_out = []
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            logits = (q[:, sl] * d**-0.5) @ kk[:, sl].T + table[index, hd]
            if mask is not None:
                logits = logits + mask[r]
            head_out.append(torch.softmax(logits, -1) @ v[:, sl])
        o = torch.cat(head_out, -1) @ blk.attn.proj.weight.T + blk.attn.proj.bias
        out[b, row * ws:(row + 1) * ws, col * ws:(col + 1) * ws] = o.reshape(ws, ws, c)
    if s:
        out = torch.roll(out, shifts=(s, s), dims=(1, 2))
    x = x + out[:, :h, :w]
    hid = ln(x, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
    return x + hid @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def slow_merge(m, x: torch.Tensor) -> torch.Tensor:
    n, h, w, c = x.shape
    y = torch.zeros(n, h + h % 2, w + w % 2, c)
    y[:, :h, :w] = x
    parts = [y[:, 0::2, 0::2], y[:, 1::2, 0::2], y[:, 0::2, 1::2], y[:, 1::2, 1::2]]
    return ln(torch.cat(parts, -1), m.norm) @ m.reduction.weight.T


def slow_swin(model: SwinTransformer, images: torch.Tensor) -> dict[str, torch.Tensor]:
    n, _, h, w = images.shape
    p = model.cfg.patch_size
    padded = torch.zeros(n, 3, math.ceil(h / p) * p, math.ceil(w / p) * p)
    padded[:, :, :h, :w] = images
    x = F.conv2d(padded, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=p)
    x = ln(x.permute(0, 2, 3, 1), model.patch_embed.norm)
    out = {}
    for i, stage in enumerate(model.layers):
        for blk in stage.blocks:
            x = slow_block(blk, x)
        out[f"res{i + 2}"] = ln(x, getattr(model, f"norm{i}")).permute(0, 3, 1, 2)
        if stage.downsample is not None:
            x = slow_merge(stage.downsample, x)
    return out


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("ws", [7, 12])
def test_relative_position_index_and_bias(ws):
    torch.testing.assert_close(relative_position_index(ws), slow_relative_index(ws), rtol=0, atol=0)
    model = SwinTransformer(SwinConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), window_size=ws))
    attn = model.layers[0].blocks[0].attn
    bias = attn.relative_position_bias()
    idx = slow_relative_index(ws)
    for hd in range(2):
        torch.testing.assert_close(bias[hd], attn.relative_position_bias_table[idx, hd], rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 14, 21, 3), (1, 7, 21, 3), (1, 21, 7, 3), (1, 7, 7, 3), (3, 7, 14, 2)])
def test_window_partition_and_reverse(shape):
    """Batch 1 with one window row and several columns (and the reverse): the windows must flatten as
    attention does (`.view(-1, ws * ws, c)`)."""
    x = torch.randn(*shape)
    wins = window_partition(x, 7)
    torch.testing.assert_close(wins, torch.stack(slow_windows(x, 7)), rtol=0, atol=0)
    assert wins.view(-1, 49, shape[-1]).shape[0] == len(slow_windows(x, 7))
    torch.testing.assert_close(window_reverse(wins, 7, *shape[1:3]), x, rtol=0, atol=0)


@pytest.mark.parametrize("hp, wp, ws", [(14, 21, 7), (7, 7, 7), (24, 36, 12), (12, 12, 12)])
def test_shifted_window_mask(hp, wp, ws):
    # (7, 7) and (12, 12): a map padded up to a single window, still shifted and masked.
    torch.testing.assert_close(shifted_window_mask(hp, wp, ws, ws // 2), slow_mask(hp, wp, ws, ws // 2),
                               rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 5, 4, 16), (2, 9, 16, 16)])
def test_block_padding_and_small_maps(shape):
    """Maps smaller than the window (5x4 < 7) and odd sizes needing padding, plain and shifted blocks."""
    model = SwinTransformer(NARROW).eval()
    stage = model.layers[0]
    x = torch.randn(*shape)
    mask = shifted_window_mask(math.ceil(shape[1] / 7) * 7, math.ceil(shape[2] / 7) * 7, 7, 3)
    with torch.no_grad():
        for blk in stage.blocks:
            torch.testing.assert_close(blk(x, mask), slow_block(blk, x), rtol=1e-5, atol=1e-5)
        xm = torch.randn(shape[0], 9, 13, 16)  # odd sizes into patch merging
        torch.testing.assert_close(stage.downsample(xm), slow_merge(stage.downsample, xm), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(130, 203), (64, 96), (64, 224), (224, 64), (32, 160)])
def test_full_narrow_swin_forward(hw):
    """130x203: odd sizes padded by the patch embedding (33x51 tokens) and at every merge; 64x96: res5 is 2x3,
    smaller than the 7x7 window; 64x224, 32x160 (and 224x64): at batch 1, stages with one window row and
    several window columns (one column, several rows)."""
    torch.manual_seed(0)
    model = SwinTransformer(NARROW).eval()
    for p in model.parameters():  # non-trivial norms and biases
        p.data.add_(0.05 * torch.randn_like(p))
    images = torch.randn(1, 3, *hw)
    with torch.no_grad():
        ours, ref = model(images), slow_swin(model, images)
    sizes = [(math.ceil(hw[0] / 4), math.ceil(hw[1] / 4))]
    for _ in range(3):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    for i, (name, out) in enumerate(ours.items()):
        assert out.shape == (1, 16 * 2**i, *sizes[i]), name
        torch.testing.assert_close(out, ref[name], rtol=1e-4, atol=1e-4)


def test_official_swin_keys_and_shapes():
    """Every key and shape of an official Swin-L (and R-101) VITA checkpoint, from the official code."""
    for name in ("swinl-ytvis19", "swinl-ovis", "r101-ytvis21"):
        cfg = get_config(name)
        with torch.device("meta"):
            model = build_model(cfg)
        ours = {to_official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
        expected = official_keys(name.split("-")[0], cfg.num_classes)
        assert sorted(set(ours) ^ set(expected)) == []
        assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    backbone = swin_backbone_keys(192, (2, 2, 18, 2), (6, 12, 24, 48), 12)
    assert len(backbone) == 357 and sum(k.endswith("relative_position_index") for k in backbone) == 24
    model = SwinTransformer(get_config("swinl-ytvis19").backbone)
    assert sum(p.numel() for p in model.parameters()) == 195_201_204
    assert model.layers[2].blocks[0].attn.relative_position_index.dtype == torch.int64


def test_frame_detector_with_swin_at_two_sizes():
    cfg = replace(get_config("tiny"), name="tiny-swin", backbone=NARROW)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for n, h, w in ((2, 64, 96), (2, 96, 64), (1, 64, 224), (1, 224, 64)):  # batch 1: one window row / column
            fq, mf = model.frame_detector(torch.randn(n, 3, h, w))
            assert fq.shape == (n, 20, 64) and mf.shape == (n, 64, h // 4, w // 4)
            assert torch.isfinite(fq).all() and torch.isfinite(mf).all()
