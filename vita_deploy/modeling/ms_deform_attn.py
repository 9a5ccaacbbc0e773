"""Multi-scale deformable attention (Deformable DETR), the pixel decoder's hot spot.

`ms_deform_attn` is the one reference implementation, in plain PyTorch (grid_sample), with the inputs and
output of NVIDIA's `MultiscaleDeformableAttnPlugin_TRT` so that every exported or compiled variant can be
checked against it. `MSDeformAttn` is the module with the official parameter names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the given locations and sum with the attention weights.

    Args:
        value: (N, S, M, D), the levels flattened row-major and concatenated, S = sum(h * w).
        spatial_shapes: (L, 2) integer (h, w) per level.
        level_start_index: (L,) integer offset of each level in S (checked, not needed here).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1]; pixel centres at (i + 0.5) / size,
            locations outside the map read zeros (grid_sample, align_corners=False, zero padding).
        attention_weights: (N, Lq, M, L, P), already softmax-normalised over (L, P).
    Returns:
        (N, Lq, M, D)
    """
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    if len(shapes) != num_levels or sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} do not match value length {s} and {num_levels} levels")
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (N, h*w, M, D) -> (N, M, D, h*w) -> (N*M, D, h, w)
        v = values[lvl].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, D, Lq, L, P) -> (N*M, D, Lq, L*P)
    sampled_all = torch.stack(sampled, dim=-2).flatten(-2)
    # (N, Lq, M, L, P) -> (N, M, Lq, L*P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (sampled_all * weights).sum(-1)  # (N*M, D, Lq)
    return out.view(n, m, d, lq).permute(0, 3, 1, 2)  # (N, Lq, M, D)


class MSDeformAttn(nn.Module):
    """Deformable attention module; parameter names as in the official `ops/modules/ms_deform_attn.py`."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start on a ring of directions at growing radii, as in Deformable DETR.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * torch.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """query (N, Lq, C), reference_points (N, Lq, L, 2) in [0, 1], input_flatten (N, S, C) -> (N, Lq, C)."""
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten).view(n, s, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).softmax(-1).view(n, lq, m, lv, p)
        # Offsets are in pixels of each level: normalise by (w, h).
        normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(query.dtype)  # (L, 2)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)  # (N, Lq, M, D)
        return self.output_proj(out.flatten(2))
