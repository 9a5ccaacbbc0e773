"""`torch.ops.vita.ms_deform_attn`: the Triton kernel as a PyTorch op (torch.library.triton_op).

torch.compile sees the Triton kernel inside the op, and torch.export records `vita.ms_deform_attn.default`.
Forward only (inference): autograd and CPU use the grid_sample reference. Importing this module registers the op;
it needs triton (TritonUnavailableError names the fix otherwise).
"""
from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from vita_deploy.kernels import ms_deform_attn as K

K.require_triton()


def _is_fake(t: torch.Tensor) -> bool:
    """Fake/meta tensors (torch.compile, torch.export tracing) must not reach the interpreter's real launch."""
    from torch._subclasses.fake_tensor import is_fake
    return t.device.type == "meta" or is_fake(t)


@triton_op("vita::ms_deform_attn", mutates_args={})
def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """(N, S, M, D), (L, 2) int32, (L,) int32, (N, Lq, M, L, P, 2), (N, Lq, M, L, P) -> (N, Lq, M, D)."""
    n, _, m, d = value.shape
    out = value.new_empty(n, sampling_locations.shape[1], m, d)
    if _is_fake(value):
        # Under the interpreter wrap_triton returns the raw kernel, so the automatic fake implementation would
        # launch it on fake tensors; shapes are all a fake run needs.
        return out
    return K.ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                   out=out, wrap=wrap_triton)
