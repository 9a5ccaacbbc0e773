"""`torch.ops.vita.ms_deform_attn`: the Triton kernel as a PyTorch op (torch.library.custom_op).

The op is opaque to torch.compile and torch.export: a compiled graph calls it as one op (Inductor as an extern
kernel) and torch.export records `vita.ms_deform_attn.default`; tracing uses the shape-only fake registration
below and never the body, and the body always launches the kernel (on CUDA tensors the compiled kernel, on CPU
tensors Triton's interpreter). So what a compiled graph contains is the same with and without the interpreter.
(An earlier `triton_op` form, which lets Inductor trace into the kernel launch, had to skip the launch on fake
tensors under the interpreter, and torch.compile then recorded an uninitialised tensor instead of the kernel.)
Forward only (inference): autograd and CPU use the grid_sample reference. Importing this module registers the op;
it needs triton (TritonUnavailableError names the fix otherwise).
"""
from __future__ import annotations

import torch

from vita_deploy.kernels import ms_deform_attn as K

K.require_triton()


@torch.library.custom_op("vita::ms_deform_attn", mutates_args=())
def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """(N, S, M, D), (L, 2) int32, (L,) int32, (N, Lq, M, L, P, 2), (N, Lq, M, L, P) -> (N, Lq, M, D)."""
    return K.ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@ms_deform_attn.register_fake
def _(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
      sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Shapes only: (N, Lq, M, D) in value's dtype, for tracing (torch.compile, torch.export, FakeTensorMode)."""
    n, _, m, d = value.shape
    return value.new_empty(n, sampling_locations.shape[1], m, d)
