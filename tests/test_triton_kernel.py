"""The Triton deformable-attention kernel under Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest)
against an independent float64 loop reference, the torch op, and the model with the op vs grid_sample."""
from __future__ import annotations

import importlib.util
import inspect
import math

import pytest
import torch

from references import deform_attn_grid_sample
from references import deform_attn_loop as slow_reference

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[gpu]' or '.[dev]')")

from vita_deploy.kernels import ms_deform_attn as K  # noqa: E402
from vita_deploy.kernels import ms_deform_attn_triton  # noqa: E402

needs_interpreter = pytest.mark.skipif(not K.interpreting(), reason="runs CPU tensors in Triton's interpreter: "
                                       "TRITON_INTERPRET=1 (set by conftest when there is no GPU)")
pytestmark = needs_interpreter

# (level shapes, heads, channels, points): odd channel counts (24 is not a power of two), levels of size 1,
# one level and four levels, one and four points.
CASES = [([(5, 7), (3, 4), (1, 1)], 2, 24, 3), ([(4, 6), (2, 3)], 1, 32, 4), ([(1, 1)], 2, 32, 1),
         ([(6, 5), (3, 3), (2, 2), (1, 2)], 2, 8, 2)]
# Relative error (max |out - ref| / max |ref|) against float64 on the same (dtype-rounded) inputs: fp32 is exact
# up to fp32 arithmetic; fp16 and bf16 add one rounding of the output (2^-11, 2^-8).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def make_inputs(shapes, heads, channels, points, n=2, lq=9, seed=0, low=-0.3, high=1.3):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, heads, channels, generator=g)
    loc = torch.rand(n, lq, heads, len(shapes), points, 2, generator=g) * (high - low) + low
    weights = torch.rand(n, lq, heads, len(shapes), points, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    spatial = torch.tensor(shapes, dtype=torch.int32)
    starts = torch.tensor([0] + [h * w for h, w in shapes][:-1], dtype=torch.int32).cumsum(0).to(torch.int32)
    return value, spatial, starts, loc, weights


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernel_matches_float64_loop_reference(case, dtype):
    shapes, heads, channels, points = CASES[case]
    value, spatial, starts, loc, weights = make_inputs(shapes, heads, channels, points, seed=case)
    outside = ((loc < 0) | (loc > 1)).any(-1).float().mean().item()
    assert outside >= 0.2  # a good share of samples falls outside the map or straddles its border
    value = value.to(dtype)
    out = torch.full((2, 9, heads, channels), float("nan"), dtype=dtype)  # poisoned: every element must be written
    ms_deform_attn_triton(value, spatial, starts, loc, weights, out=out)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = slow_reference(value.double(), shapes, loc.double(), weights.double())
    err = rel_error(out, ref)
    print(f"\n{dtype} L={len(shapes)} P={points} D={channels}: relative error {err:.2e} vs float64 "
          f"({outside:.0%} of samples outside)")
    assert err <= TOLERANCE[dtype]


def _edge_inputs(seed: int):
    """Random 3-8 heads, 2-4 levels of odd sizes (1 to 9 per side), 2-4 points, and locations drawn from
    [-0.4, 1.4] mixed with values exactly on the map's edges (0, 1), on pixel centres ((i + 0.5) / size) and on
    pixel borders (i / size), so samples land outside, on, and straddling every border."""
    g = torch.Generator().manual_seed(seed)
    heads, levels, points = (int(torch.randint(lo, hi + 1, (1,), generator=g)) for lo, hi in ((3, 8), (2, 4), (2, 4)))
    shapes = [tuple(int(v) for v in torch.randint(1, 10, (2,), generator=g)) for _ in range(levels)]
    value, spatial, starts, loc, weights = make_inputs(shapes, heads, 8, points, n=1 + seed % 2, lq=7, seed=seed,
                                                       low=-0.4, high=1.4)
    size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)  # (L, 2) as (x, y)
    snapped = torch.randint(0, 10, loc.shape, generator=g).float()
    kind = torch.randint(0, 4, loc.shape, generator=g)
    centre, border = (snapped + 0.5) / size[:, None], snapped / size[:, None]
    exact = torch.where(torch.rand(loc.shape, generator=g) < 0.5, 0.0, 1.0)
    loc = torch.where(kind == 1, centre, torch.where(kind == 2, border, torch.where(kind == 3, exact, loc)))
    return shapes, value, spatial, starts, loc, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("seed", range(4))
def test_kernel_on_edges_equals_float64_grid_sample(seed, dtype):
    """Randomized heads, levels, points and odd level sizes; locations outside, exactly on borders and on pixel
    centres; fp16 values (fp32 locations and weights, as the model passes them)."""
    shapes, value, spatial, starts, loc, weights = _edge_inputs(seed)
    value = value.to(dtype)
    out = ms_deform_attn_triton(value, spatial, starts, loc, weights)
    ref = deform_attn_grid_sample(value.double(), shapes, loc.double(), weights.double())
    assert rel_error(out, ref) <= TOLERANCE[dtype], f"seed {seed}: heads {value.shape[2]}, levels {shapes}"


def test_samples_all_outside_the_map_give_zeros():
    value, spatial, starts, loc, weights = make_inputs(*CASES[0], low=1.6, high=3.0)
    out = ms_deform_attn_triton(value, spatial, starts, loc, weights)
    assert torch.equal(out, torch.zeros_like(out))
    far = ms_deform_attn_triton(value, spatial, starts, loc * 1e9 - 5e8, weights)  # no int32 overflow wraps inside
    assert torch.equal(far, torch.zeros_like(far))


def test_fp32_locations_with_fp16_values_and_matching_reference_module():
    """The model path: fp16 values with fp32 locations and weights equals the grid_sample reference."""
    from vita_deploy.modeling.ms_deform_attn import ms_deform_attn

    value, spatial, starts, loc, weights = make_inputs(*CASES[1])
    out = ms_deform_attn_triton(value.half(), spatial, starts, loc, weights)
    ref = ms_deform_attn(value.half().double(), spatial, starts, loc.double(), weights.double())
    assert out.dtype == torch.float16 and rel_error(out, ref) <= TOLERANCE[torch.float16]


def test_a_kernel_without_the_half_pixel_offset_fails_the_comparison(tmp_path):
    """The comparison can fail: the same kernel source with `- 0.5` removed must miss the reference."""
    source = inspect.getsource(K._msda_fwd_kernel)
    assert source.count("- 0.5") == 2
    module_file = tmp_path / "mutant_kernel.py"
    module_file.write_text("import triton.language as tl\n\n\n" + source.replace("- 0.5", "- 0.0"))
    spec = importlib.util.spec_from_file_location("mutant_kernel", module_file)
    mutant_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutant_module)
    mutant = triton.jit(mutant_module._msda_fwd_kernel)
    shapes, heads, channels, points = CASES[0]
    value, spatial, starts, loc, weights = make_inputs(shapes, heads, channels, points)
    out = torch.empty(2, 9, heads, channels)
    sz = K.kernel_sizes(value.shape, spatial.shape, starts.shape, loc.shape, weights.shape)
    mutant[K.launch_grid(sz.n, sz.lq, sz.m)[:2]](value, spatial, starts, loc, weights, sz.n, sz.s, sz.lq, out, M=heads,
                                                 D=channels, L=len(shapes), P=points, BLOCK_Q=K.DEFAULT_BLOCK_Q,
                                                 BLOCK_D=K.block_d(channels))
    ref = slow_reference(value.double(), shapes, loc.double(), weights.double())
    err = rel_error(out, ref)
    print(f"\nkernel without the -0.5 offset: relative error {err:.2e}")
    assert err > 0.05


def test_launch_arithmetic_and_shape_checks():
    assert [K.block_d(d) for d in (1, 8, 24, 32, 33, 256)] == [1, 8, 32, 32, 64, 256]
    assert K.launch_grid(18, 4760, 8, 32) == (math.ceil(4760 / 32), 144, 1)
    assert K.launch_grid(1, 1, 1, 64) == (1, 1, 1)
    value, spatial, starts, loc, weights = make_inputs(*CASES[0])
    with pytest.raises(ValueError, match="disagree"):
        ms_deform_attn_triton(value, spatial, starts, loc[:, :, :1], weights)
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn_triton(value, spatial[:2], starts[:2], loc, weights)
    assert ms_deform_attn_triton(value, spatial, starts, loc[:, :0], weights[:, :0]).shape == (2, 0, 2, 24)


def test_clear_errors_without_triton_or_interpreter(monkeypatch):
    value, spatial, starts, loc, weights = make_inputs(*CASES[0])
    monkeypatch.setattr(K, "interpreting", lambda: False)
    with pytest.raises(K.TritonUnavailableError, match="TRITON_INTERPRET=1"):
        ms_deform_attn_triton(value, spatial, starts, loc, weights)
    monkeypatch.setattr(K, "triton", None)
    with pytest.raises(K.TritonUnavailableError, match=r"pip install -e '\.\[gpu\]'"):
        ms_deform_attn_triton(value, spatial, starts, loc, weights)


def test_torch_op_runs_eagerly_traces_with_fake_tensors_and_exports():
    import vita_deploy.kernels.torch_op  # noqa: F401
    from torch._subclasses.fake_tensor import FakeTensorMode

    value, spatial, starts, loc, weights = make_inputs(*CASES[1])
    out = torch.ops.vita.ms_deform_attn(value, spatial, starts, loc, weights)
    torch.testing.assert_close(out, ms_deform_attn_triton(value, spatial, starts, loc, weights), rtol=0, atol=0)
    with FakeTensorMode() as mode:  # the fake implementation must not launch the interpreter on fake tensors
        fake = torch.ops.vita.ms_deform_attn(*(mode.from_tensor(t) for t in (value, spatial, starts, loc, weights)))
    assert fake.shape == out.shape and fake.dtype == out.dtype

    class Wrapper(torch.nn.Module):
        def forward(self, v, s, st, lo, w):
            return torch.ops.vita.ms_deform_attn(v, s, st, lo, w) * 2

    program = torch.export.export(Wrapper(), (value, spatial, starts, loc, weights))
    assert "vita.ms_deform_attn.default" in str(program.graph)


@pytest.mark.parametrize("backend", [None, "aot_eager", "inductor"], ids=["eager", "aot_eager", "inductor"])
def test_frame_detector_with_the_triton_op_equals_the_grid_sample_path(backend):
    """The tiny frame detector on one small frame: deform_attn_implementation('triton') vs 'reference', eager and
    under torch.compile, which must keep the kernel (the compiled graph calls `vita.ms_deform_attn`: its fake
    registration gives shapes for tracing; the body always launches the kernel)."""
    from vita_deploy.config import get_config
    from vita_deploy.modeling.model import build_model
    from vita_deploy.modeling.ms_deform_attn import deform_attn_implementation

    torch._dynamo.reset()
    model = build_model(get_config("tiny")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        with deform_attn_implementation("reference"):
            ref = model.frame_detector(x)
        with deform_attn_implementation("triton"):
            run = model.frame_detector if backend is None else torch.compile(model.frame_detector, backend=backend)
            ours = run(x)
    for a, b in zip(ours, ref):
        err = ((a - b).abs().max() / b.abs().max()).item()
        print(f"\ntiny frame detector, triton ({backend or 'eager'}) vs grid_sample: relative error {err:.2e}")
        assert err <= 1e-5
