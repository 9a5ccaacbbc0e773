"""MSDeformAttn pixel decoder (Mask2Former `pixel_decoder/msdeformattn.py`, L166-360).

res5/res4/res3 are projected to `conv_dim`, encoded jointly by deformable-attention layers, then one FPN
level on res2 brings the map to stride 4. Parameter names match the official checkpoint under
`sem_seg_head.pixel_decoder.`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vita_deploy.config import PixelDecoderConfig
from vita_deploy.modeling.backbone import Conv2dNorm
from vita_deploy.modeling.ms_deform_attn import MSDeformAttn
from vita_deploy.modeling.position_encoding import sine_position_encoding
from vita_deploy.modeling.transformer_layers import GroupNorm, LayerNorm


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """detectron2's `c2_xavier_fill`: Caffe2 XavierFill = kaiming_uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class DeformableEncoderLayer(nn.Module):
    """Post-norm: x = norm1(x + MSDeformAttn(x + pos)); x = norm2(x + FFN(x))."""

    def __init__(self, d_model: int, ffn_dim: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    """Holds `level_embed` and `encoder.layers.*` (the official `MSDeformAttnTransformerEncoderOnly`)."""

    def __init__(self, cfg: PixelDecoderConfig, n_levels: int = 3) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, cfg.conv_dim))
        nn.init.normal_(self.level_embed)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(cfg.conv_dim, cfg.ffn_dim, n_levels, cfg.num_heads, cfg.num_points)
            for _ in range(cfg.num_layers)
        )

    @staticmethod
    def reference_points(shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1]: (S, 2) as (x, y)."""
        points = []
        for h, w in shapes:
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            points.append(torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1).reshape(-1, 2))
        return torch.cat(points, 0)

    def forward(self, srcs: list[torch.Tensor], pos: list[torch.Tensor]) -> torch.Tensor:
        """srcs, pos: per level (N, C, h, w) -> encoded tokens (N, S, C), S = sum(h * w)."""
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        device = srcs[0].device
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (N, S, C)
        pos_flat = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i][None, None]
                              for i, p in enumerate(pos)], 1)
        # Without padding masks every level's valid ratio is 1: one set of reference points for all levels.
        ref = self.reference_points(shapes, device)  # (S, 2)
        ref = ref[None, :, None, :].expand(src_flat.shape[0], -1, len(shapes), -1)  # (N, S, L, 2)
        out = src_flat
        for layer in self.encoder.layers:
            out = layer(out, pos_flat, ref, shapes)
        return out


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features -> (mask_features, clip_mask_features, multi_scale_features).

    Returns:
        mask_features: (N, mask_dim, H/4, W/4), Mask2Former's own 1x1 conv, used by the frame decoder's masks.
        clip_mask_features: (N, conv_dim, H/4, W/4), the stride-4 map before that conv (VITA's input).
        multi_scale_features: [(N, C, H/32, W/32), (N, C, H/16, W/16), (N, C, H/8, W/8)].
    """

    def __init__(self, cfg: PixelDecoderConfig, in_channels: dict[str, int]) -> None:
        super().__init__()
        c = cfg.conv_dim
        # input_proj[0] is res5, [1] res4, [2] res3 (official order: transformer_in_features reversed).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[name], c, 1), GroupNorm(cfg.norm_groups, c))
            for name in ("res5", "res4", "res3")
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = DeformableEncoder(cfg)
        self.conv_dim = c
        self.mask_features = nn.Conv2d(c, cfg.mask_dim, 1)
        c2_xavier_fill(self.mask_features)
        # One extra FPN level on res2 (stride 8 -> 4); official names adapter_1 / layer_1.
        self.adapter_1 = Conv2dNorm(in_channels["res2"], c, 1, bias=False, norm=GroupNorm(cfg.norm_groups, c))
        self.layer_1 = Conv2dNorm(c, c, 3, padding=1, bias=False, norm=GroupNorm(cfg.norm_groups, c), relu=True)
        c2_xavier_fill(self.adapter_1)
        c2_xavier_fill(self.layer_1)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        clip_mask_features, multi_scale = self.encode(features)
        return self.mask_features(clip_mask_features), clip_mask_features, multi_scale

    def encode(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Backbone features -> (clip_mask_features, multi_scale_features), without Mask2Former's mask conv
        (the mask-feature graph needs only the stride-4 map)."""
        levels = [features[name] for name in ("res5", "res4", "res3")]
        srcs = [proj(x) for proj, x in zip(self.input_proj, levels)]
        pos = [sine_position_encoding(x, self.conv_dim // 2) for x in srcs]
        memory = self.transformer(srcs, pos)  # (N, S, C)
        n = memory.shape[0]
        outs = []
        for tokens, src in zip(memory.split([s.shape[2] * s.shape[3] for s in srcs], dim=1), srcs):
            outs.append(tokens.transpose(1, 2).reshape(n, -1, src.shape[2], src.shape[3]))
        lateral = self.adapter_1(features["res2"])
        fpn = self.layer_1(lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear",
                                                   align_corners=False))
        return fpn, outs


def build_pixel_decoder(cfg: PixelDecoderConfig, in_channels: dict[str, int]) -> MSDeformAttnPixelDecoder:
    return MSDeformAttnPixelDecoder(cfg, in_channels)
