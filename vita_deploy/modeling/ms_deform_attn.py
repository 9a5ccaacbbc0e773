"""Multi-scale deformable attention (Deformable DETR), the pixel decoder's hot spot.

`ms_deform_attn` is the one reference implementation, in plain PyTorch (grid_sample), with the inputs and
output of NVIDIA's `MultiscaleDeformableAttnPlugin_TRT` so that every exported or compiled variant can be
checked against it. `MSDeformAttn` is the module with the official parameter names.
"""
from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[tuple[int, int]],
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the given locations and sum with the attention weights.

    Args:
        value: (N, S, M, D), the levels flattened row-major and concatenated, S = sum(h * w).
        spatial_shapes: (L, 2) integer (h, w) per level, or the same as a list of (h, w) (static or symbolic
            sizes: what the model passes, so that export never reads sizes out of a tensor).
        level_start_index: (L,) integer offset of each level in S (checked, not needed here).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1]; pixel centres at (i + 0.5) / size,
            locations outside the map read zeros (grid_sample, align_corners=False, zero padding).
        attention_weights: (N, Lq, M, L, P), already softmax-normalised over (L, P).
    Returns:
        (N, Lq, M, D)
    """
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    if isinstance(spatial_shapes, torch.Tensor):
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        if len(shapes) != num_levels or sum(h * w for h, w in shapes) != s:
            raise ValueError(f"spatial_shapes {shapes} do not match value length {s} and {num_levels} levels")
    else:
        shapes = list(spatial_shapes)
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


def level_sizes(shapes: Sequence[tuple[int, int]], like: torch.Tensor, dtype: torch.dtype | None = None
                ) -> torch.Tensor:
    """[(h, w)] -> (L, 2) tensor of (h, w); works with static and symbolic (export-time) sizes."""
    one = torch.ones((), dtype=dtype or like.dtype, device=like.device)
    return torch.stack([torch.stack([one * h, one * w]) for h, w in shapes])


def ms_deform_attn_gather(value: torch.Tensor, shapes: Sequence[tuple[int, int]], sampling_locations: torch.Tensor,
                          attention_weights: torch.Tensor) -> torch.Tensor:
    """The same computation as `ms_deform_attn` from standard ONNX operators only (Floor, Gather, Mul, ...):
    bilinear sampling written out as four corner gathers, so it exports without GridSample (which recent
    TensorRT miscompiles for this pattern) and runs in ONNX Runtime, TensorRT and TensorRT-RTX without plugins.
    Sampling coordinates and accumulation stay in fp32. Shapes as in `ms_deform_attn`; `shapes` may be symbolic."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    loc = sampling_locations.float()
    # (N, Lq, M, L, P) -> (N*M, L, Lq*P)
    weights = attention_weights.float().permute(0, 2, 3, 1, 4).reshape(n * m, num_levels, lq * num_points)
    base = torch.arange(n * m, device=value.device)[:, None]  # which (batch, head) block of rows
    out = torch.zeros(n * m, lq * num_points, d, dtype=torch.float32, device=value.device)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        hw = h * w
        # (N, h*w, M, D) -> (N*M*h*w, D): one row per pixel of every (batch, head)
        v = value[:, start:start + hw].permute(0, 2, 1, 3).reshape(-1, d)
        start = start + hw
        # (N, Lq, M, P, 2) -> (N*M, Lq*P, 2); pixel centres at integer coordinates
        xy = loc[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(n * m, lq * num_points, 2)
        x = xy[..., 0] * w - 0.5
        y = xy[..., 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            cx, cy = x0 + dx, y0 + dy
            corner_weight = (1 - (x - cx).abs()) * (1 - (y - cy).abs())
            inside = ((cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)).float()
            index = base * hw + (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long()  # (N*M, Lq*P)
            corner = v[index.flatten()].view(n * m, lq * num_points, d).float()
            out = out + corner * (corner_weight * inside * weights[:, lvl])[..., None]
    out = out.view(n * m, lq, num_points, d).sum(2)  # (N*M, Lq, D)
    return out.view(n, m, lq, d).permute(0, 2, 1, 3).to(value.dtype)  # (N, Lq, M, D)


# -- implementation switch -----------------------------------------------------------------------------------
# "auto" (default): the Triton kernel (`torch.ops.vita.ms_deform_attn`) for CUDA inference where triton is
#   installed, else "reference";
# "reference": grid_sample (the CPU and autograd path);
# "triton": always the Triton kernel (CPU tensors need Triton's interpreter, TRITON_INTERPRET=1);
# "native": `ms_deform_attn_gather` (portable ONNX export);
# "plugin" / "vita-plugin": one `vita_deploy::ms_deform_attn_plugin` op, exported as NVIDIA's
#   MultiscaleDeformableAttnPlugin_TRT / as our own Triton plugin (`vita_deploy/export/plugin.py`).
IMPLEMENTATIONS = ("auto", "reference", "triton", "native", "plugin", "vita-plugin")
_implementation = "auto"


@contextmanager
def deform_attn_implementation(name: str):
    """Select how MSDeformAttn computes deformable attention inside the `with` block (exporter, tests, bench)."""
    global _implementation
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"deformable attention implementation must be one of {IMPLEMENTATIONS}, not {name!r}")
    previous, _implementation = _implementation, name
    try:
        yield
    finally:
        _implementation = previous


@torch.library.custom_op("vita_deploy::ms_deform_attn_plugin", mutates_args=())
def ms_deform_attn_plugin(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                          sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """One op with the exact I/O of NVIDIA's plugin (int32 spatial_shapes/level_start_index); eager: reference."""
    return ms_deform_attn(value.float(), spatial_shapes, level_start_index, sampling_locations.float(),
                          attention_weights.float()).to(value.dtype)


@ms_deform_attn_plugin.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    n, _, m, d = value.shape
    return value.new_empty(n, sampling_locations.shape[1], m, d)


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_implementation(value: torch.Tensor, *inputs: torch.Tensor) -> str:
    """The implementation the current setting selects for these tensors ("auto" resolved)."""
    if _implementation != "auto":
        return _implementation
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (value, *inputs))
    return "triton" if value.is_cuda and not needs_grad and triton_installed() else "reference"


def _level_inputs(shapes: Sequence[tuple[int, int]], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """spatial_shapes (L, 2) and level_start_index (L,), int32, as the plugins take them."""
    spatial = level_sizes(shapes, like, torch.int32)  # (L, 2)
    starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1].to(torch.int32)])
    return spatial, starts


def _dispatch(value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor,
              weights: torch.Tensor) -> torch.Tensor:
    impl = resolve_implementation(value, locations, weights)
    if impl == "native":
        return ms_deform_attn_gather(value, shapes, locations, weights)
    if impl == "triton":
        import vita_deploy.kernels.torch_op  # noqa: F401  (registers torch.ops.vita.ms_deform_attn)
        return torch.ops.vita.ms_deform_attn(value, *_level_inputs(shapes, value), locations, weights)
    if impl == "plugin":  # NVIDIA's I/O: locations and weights in value's dtype
        return ms_deform_attn_plugin(value, *_level_inputs(shapes, value), locations.to(value.dtype),
                                     weights.to(value.dtype))
    if impl == "vita-plugin":  # our kernel takes fp32 locations and weights whatever value's dtype
        return ms_deform_attn_plugin(value, *_level_inputs(shapes, value), locations, weights)
    return ms_deform_attn(value.float(), shapes, None, locations, weights).to(value.dtype)


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

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """query (N, Lq, C), reference_points (N, Lq, L, 2) in [0, 1], input_flatten (N, S, C) whose levels
        have sizes `shapes` [(h, w)] -> (N, Lq, C)."""
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten).view(n, s, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).float().softmax(-1).view(n, lq, m, lv, p)  # fp32
        # Offsets are in pixels of each level: normalise by (w, h).
        normalizer = level_sizes(shapes, query).flip(-1)  # (L, 2) as (w, h)
        # Sampling locations in fp32 (an fp32 island in fp16 graphs: fp16 would quantise them to ~1/8 pixel).
        offsets = offsets.float() / normalizer.float()[None, None, None, :, None, :]
        locations = reference_points.float()[:, :, None, :, None, :] + offsets
        return self.output_proj(_dispatch(value, shapes, locations, weights).flatten(2))
