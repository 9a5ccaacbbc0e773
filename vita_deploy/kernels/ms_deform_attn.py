"""Multi-scale deformable attention forward in Triton: one kernel source for the CUDA torch op, the custom
TensorRT plugin (its PTX) and the CPU tests (Triton's interpreter, `TRITON_INTERPRET=1`).

I/O as NVIDIA's `MultiscaleDeformableAttnPlugin_TRT`: value (N, S, M, D); spatial_shapes (L, 2) int32 (h, w);
level_start_index (L,) int32; sampling_locations (N, Lq, M, L, P, 2) normalised (x, y), pixel centres at
(i + 0.5) / size, zeros outside the map; attention_weights (N, Lq, M, L, P) -> output (N, Lq, M, D) in value's
dtype. Values may be fp32, fp16 or bf16; sampling locations and weights may be any float dtype: positions,
corner weights and the accumulation are always fp32 (NVIDIA's fp16 kernel computes positions in half precision).

Work decomposition: one program per (block of BLOCK_Q queries, batch n x head m). For every (query, level,
point) the position, the four corner indices, their bounds and bilinear weights are computed once and shared by
all D channels, which are loaded as one contiguous vector per corner (value rows of one head are D contiguous
elements). M, D, L and P are compile-time constants (fixed by the model); N, S and Lq are runtime integers, so
one compiled kernel serves every video length and frame size.
"""
import os
from dataclasses import dataclass

import torch

try:  # triton is an optional extra ([gpu], [dev]); the reference model does not need it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

    class tl:  # noqa: N801 - stands in for triton.language so that the kernel's annotations evaluate
        constexpr = int

# (No `from __future__ import annotations` here: Triton reads the kernel's `tl.constexpr` annotations as
# objects.)

# Launch defaults where triton.autotune cannot run (the interpreter, PTX for TensorRT): a block of 32 queries x
# D channels in 4 warps: each thread loads 16-byte vectors, 16 in flight per level, in 54-64 registers without
# spills at the r50 shape (ptxas -v, sm_90a; tests/test_kernel_ptx.py checks there are no spills).
DEFAULT_BLOCK_Q = 32
DEFAULT_NUM_WARPS = 4
# What triton.autotune tries on a GPU (keyed by the sizes that change the best choice).
AUTOTUNE_SPACE = ((16, 2), (32, 4), (64, 4), (64, 8), (128, 8))  # (BLOCK_Q, num_warps)


class TritonUnavailableError(ImportError):
    """triton is not installed, or a CPU tensor was given without Triton's interpreter."""


def require_triton() -> None:
    if triton is None:
        raise TritonUnavailableError(
            "the Triton deformable-attention kernel needs the `triton` package: pip install -e '.[gpu]' "
            "(or use the grid_sample path: deform_attn_implementation('reference'))")


# Triton decides at decoration time whether a kernel runs in its interpreter, so read the setting once, here.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """True when this module's kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETED


def _msda_fwd_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr,  # inputs (plugin order)
                     N, S, Lq,  # runtime sizes (TensorRT: integer extra arguments)
                     out_ptr,  # output
                     M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                     BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_q = tl.program_id(0)
    pid_nm = tl.program_id(1)
    n = pid_nm // M
    m = pid_nm % M
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,)
    q_ok = q < Lq
    d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    d_ok = d < D
    # Per-program base pointers in int64 (batch n, head m); per-element offsets within one batch fit in int32,
    # which halves the registers an address takes.
    head_row = n.to(tl.int64) * Lq * M + m  # row (n, q=0, m) of the (N, Lq, M) query-head rows
    value_base = value_ptr + n.to(tl.int64) * S * (M * D) + m * D
    loc_base = loc_ptr + head_row * (L * P * 2)
    attn_base = attn_ptr + head_row * (L * P)
    out_base = out_ptr + head_row * D
    q_row = q * M  # (BLOCK_Q,) query-head rows from head_row
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for lvl in range(L):  # a loop in the PTX; points and corners are unrolled (16 vector loads in flight)
        h = tl.load(shapes_ptr + 2 * lvl)
        w = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        hf = h.to(tl.float32)
        wf = w.to(tl.float32)
        for pt in tl.static_range(P):
            lp = (q_row * L + lvl) * P + pt  # (BLOCK_Q,) offset into (N, Lq, M, L, P) from head_row
            lx = tl.load(loc_base + 2 * lp, mask=q_ok, other=0.0).to(tl.float32)
            ly = tl.load(loc_base + 2 * lp + 1, mask=q_ok, other=0.0).to(tl.float32)
            a = tl.load(attn_base + lp, mask=q_ok, other=0.0).to(tl.float32)
            # Pixel coordinates with centres at integers; clamped to [-2, size + 1] so that a far-away location
            # cannot overflow the int32 conversion (all four corners are outside there either way).
            x = tl.minimum(tl.maximum(lx * wf - 0.5, -2.0), wf + 1.0)
            y = tl.minimum(tl.maximum(ly * hf - 0.5, -2.0), hf + 1.0)
            x0f = tl.floor(x)
            y0f = tl.floor(y)
            fx = x - x0f
            fy = y - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            for corner in tl.static_range(4):
                dy = corner // 2
                dx = corner % 2
                cx = x0 + dx
                cy = y0 + dy
                wx = fx if dx == 1 else 1.0 - fx
                wy = fy if dy == 1 else 1.0 - fy
                inside = q_ok & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
                offs = (start + cy * w + cx) * (M * D)  # (BLOCK_Q,) first channel of pixel (n, ., m)
                v = tl.load(value_base + offs[:, None] + d[None, :], mask=inside[:, None] & d_ok[None, :], other=0.0)
                acc += v.to(tl.float32) * (wx * wy * a)[:, None]
    out_offs = q_row[:, None] * D + d[None, :]
    tl.store(out_base + out_offs, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


if triton is not None:
    # One kernel object for launches (an InterpretedFunction under TRITON_INTERPRET=1, else a JITFunction)
    # and one always-compilable JITFunction of the same source for PTX generation without a GPU.
    msda_fwd_kernel = triton.jit(_msda_fwd_kernel)
    msda_fwd_jit = triton.runtime.jit.JITFunction(_msda_fwd_kernel)
    msda_fwd_autotuned = None if interpreting() else triton.autotune(
        configs=[triton.Config({"BLOCK_Q": bq}, num_warps=nw, num_stages=1) for bq, nw in AUTOTUNE_SPACE],
        key=["Lq", "M", "D", "L", "P"])(msda_fwd_kernel)
else:  # pragma: no cover
    msda_fwd_kernel = msda_fwd_jit = msda_fwd_autotuned = None


# -- launch arithmetic: plain functions of ints (also given TensorRT's symbolic expressions by the plugin) ---------

def cdiv(a, b):
    """Ceiling division for ints (and anything with // and +, such as TensorRT's ShapeExpr)."""
    return (a + b - 1) // b


def block_d(d: int) -> int:
    """Channel vector width: the next power of two >= D (tl.arange needs a power of two; the rest is masked)."""
    return 1 << max(int(d) - 1, 0).bit_length()


def launch_grid(n, lq, m, block_q: int = DEFAULT_BLOCK_Q, div=cdiv) -> tuple:
    """Programs per axis: (query blocks, N * M, 1). `div` is TensorRT's `trtp.cdiv` for symbolic sizes."""
    return (div(lq, block_q), n * m, 1)


@dataclass(frozen=True)
class KernelSizes:
    """The sizes one launch needs, read off the inputs (and checked against each other)."""

    n: int
    s: int
    lq: int
    m: int
    d: int
    levels: int
    points: int


def kernel_sizes(value_shape, shapes_shape, starts_shape, loc_shape, attn_shape) -> KernelSizes:
    """Check the five input shapes against each other (NVIDIA's plugin I/O) and return the launch sizes
    (ints, or symbolic sizes while torch.compile traces: no int() here, so nothing is specialised)."""
    if len(value_shape) != 4:
        raise ValueError(f"value must be (N, S, M, D), got shape {tuple(value_shape)}")
    n, s, m, d = value_shape
    if len(loc_shape) != 6 or loc_shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (N, Lq, M, L, P, 2), got shape {tuple(loc_shape)}")
    _, lq, _, levels, points, _ = loc_shape
    if tuple(loc_shape[:3]) != (n, lq, m) or tuple(attn_shape) != (n, lq, m, levels, points):
        raise ValueError(f"value {tuple(value_shape)}, sampling_locations {tuple(loc_shape)} and attention_weights "
                         f"{tuple(attn_shape)} disagree on N, M, L or P")
    if tuple(shapes_shape) != (levels, 2) or tuple(starts_shape) != (levels,):
        raise ValueError(f"spatial_shapes {tuple(shapes_shape)} / level_start_index {tuple(starts_shape)} must be "
                         f"({levels}, 2) / ({levels},) for {levels} levels")
    return KernelSizes(n, s, lq, m, d, levels, points)


def ms_deform_attn_triton(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                          sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the Triton kernel (plugin argument order) -> (N, Lq, M, D) in value's dtype.

    Always launches the kernel: on CUDA tensors the autotuned one, on CPU tensors Triton's interpreter (which
    needs TRITON_INTERPRET=1 set before triton is imported). `out`, when given, is written in place.
    """
    require_triton()
    if value.device.type == "cpu" and not interpreting():
        raise TritonUnavailableError("CPU tensors run the Triton kernel only in Triton's interpreter: set "
                                     "TRITON_INTERPRET=1 before importing triton, or use a CUDA device")
    sz = kernel_sizes(value.shape, spatial_shapes.shape, level_start_index.shape, sampling_locations.shape,
                      attention_weights.shape)
    if out is None:
        out = torch.empty(sz.n, sz.lq, sz.m, sz.d, dtype=value.dtype, device=value.device)
    if out.numel() == 0:
        return out
    args = (value.contiguous(), spatial_shapes.to(device=value.device, dtype=torch.int32).contiguous(),
            level_start_index.to(device=value.device, dtype=torch.int32).contiguous(),
            sampling_locations.contiguous(), attention_weights.contiguous(), sz.n, sz.s, sz.lq, out)
    constants = dict(M=sz.m, D=sz.d, L=sz.levels, P=sz.points, BLOCK_D=block_d(sz.d))
    if msda_fwd_autotuned is not None and value.is_cuda:
        grid = lambda meta: launch_grid(sz.n, sz.lq, sz.m, meta["BLOCK_Q"])[:2]  # noqa: E731
        msda_fwd_autotuned[grid](*args, **constants)
    else:
        msda_fwd_kernel[launch_grid(sz.n, sz.lq, sz.m)[:2]](*args, **constants, BLOCK_Q=DEFAULT_BLOCK_Q,
                                                            num_warps=DEFAULT_NUM_WARPS)
    return out
