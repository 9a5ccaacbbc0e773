"""Sine position encoding of a feature map (Mask2Former `position_encoding.py`, normalize=True)."""
from __future__ import annotations

import math

import torch


def sine_position_encoding(x: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, 2 * num_pos_feats, H, W), y features first, then x; depends only on H and W.

    Coordinates are 1..H (1..W) divided by H (W) and scaled to 2*pi, as in the official code (no -0.5 offset).
    """
    n, _, h, w = x.shape
    eps = 1e-6
    y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device) / (h + eps) * (2 * math.pi)
    x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device) / (w + eps) * (2 * math.pi)
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_y = y_embed[:, None] / dim_t  # (H, F)
    pos_x = x_embed[:, None] / dim_t  # (W, F)
    # interleave sin on even and cos on odd features
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=2)  # (H, W, 2F)
    return pos.permute(2, 0, 1)[None].expand(n, -1, -1, -1).to(x.dtype)
