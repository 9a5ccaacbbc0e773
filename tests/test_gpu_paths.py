"""CPU tests of the logic behind the CUDA paths the GPU suite measures (issue 22): each fix runs here with the CPU
stand-in named in its test; what only a GPU can show (timings, CUDA-graph replay) is in benchmarks/gpu_suite.sh."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vita_deploy.config import get_config
from vita_deploy.errors import InputError
from vita_deploy.pipeline.feature_store import FeatureStore, HostPool, plain_allocator
from vita_deploy.runtime.base import RuntimeMismatchError

ROOT = Path(__file__).resolve().parents[1]


def _load_bench_kernels():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "bench_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- preprocess: mean/std made once per device ------------------------------------------------------------------

def test_normalize_constants_are_cached_per_device(monkeypatch):
    from vita_deploy.pipeline import preprocess

    cfg = get_config("r50").input
    preprocess._mean_std.cache_clear()
    images = torch.randint(0, 256, (2, 3, 40, 50), dtype=torch.uint8)
    first = preprocess.normalize_and_pad(images, cfg)
    calls = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: calls.append(a) or real(*a, **k))
    with torch.inference_mode():
        again = preprocess.normalize_and_pad(images, cfg)
    assert calls == []  # no tensor (on CUDA: no blocking host-to-device copy) per chunk
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float64).view(1, 3, 1, 1)
    ref = (images.double() - mean) / std
    torch.testing.assert_close(again[..., :40, :50].double(), ref, rtol=1e-6, atol=1e-5)
    assert torch.equal(first, again) and again.shape[-2:] == (64, 64)
    assert not again[..., 40:, :].any() and not again[..., :, 50:].any()
    # made outside inference mode: usable by training code with autograd
    x = images.float().requires_grad_()
    preprocess.normalize_and_pad(x, cfg).sum().backward()
    torch.testing.assert_close(x.grad[0, :, 0, 0], 1 / torch.tensor(cfg.pixel_std))


# --- fp32 / tf32 / fp16 set explicitly per eager row ------------------------------------------------------------

def test_matmul_precision_is_set_per_row():
    from vita_deploy.benchmark import set_matmul_precision

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True  # cuDNN's default: an unlabelled "fp32" row would be TF32
        assert set_matmul_precision("fp32") == {"matmul_tf32": False, "cudnn_tf32": False}
        assert torch.backends.cudnn.allow_tf32 is False
        assert set_matmul_precision("tf32") == {"matmul_tf32": True, "cudnn_tf32": True}
        assert set_matmul_precision("fp16") == {"matmul_tf32": False, "cudnn_tf32": False}
        with pytest.raises(ValueError, match="bf16"):
            set_matmul_precision("bf16")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_bench_lists_tf32_on_cpu_as_not_run():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    runs, not_run = bench.plan_runs(["torch"], ["fp32", "tf32"], torch.device("cpu"), {}, "r50")
    assert runs == [("torch", "fp32")]
    assert not_run[0]["precision"] == "tf32" and "TF32" in not_run[0]["reason"]
    # int8 / fp8 are quantized exports: run on an exported backend with such an export, listed as not run eager
    runs, not_run = bench.plan_runs(["torch", "onnxruntime"], ["fp32", "int8"], torch.device("cpu"),
                                    {"fp32": "e32", "int8": "e8"}, "r50")
    assert runs == [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert [(r["backend"], r["precision"]) for r in not_run] == [("torch", "int8")]
    with pytest.raises(InputError, match="needs an fp8 export"):
        bench.plan_runs(["onnxruntime"], ["fp8"], torch.device("cpu"), {"fp32": "e32"}, "r50")


# --- kernel benchmark: inputs built once, outside the timed callable --------------------------------------------

def test_kernel_benchmark_builds_inputs_outside_the_timed_call(monkeypatch):
    bk = _load_bench_kernels()
    shapes = bk.SMALL_SHAPES
    value, locations, weights = bk.make_inputs(2, shapes, seed=3)
    ref64 = bk.ms_deform_attn(value.double(), torch.tensor(shapes), None, locations.double(), weights.double())
    fns = {impl: bk.prepare(impl, value, shapes, locations, weights)
           for impl in ("reference (grid_sample)", "native (Gather)")}

    def forbidden(*a, **k):
        raise AssertionError("a tensor was built inside the timed call")
    monkeypatch.setattr(torch, "tensor", forbidden)
    monkeypatch.setattr(torch, "as_tensor", forbidden)
    for impl, fn in fns.items():
        out = fn()
        err = ((out.double() - ref64).abs().max() / ref64.abs().max()).item()
        assert err < 1e-5, impl
    monkeypatch.undo()
    # bytes that must move: value + locations + weights + output, and the roofline floor at the H200's peak
    moved = bk.bytes_moved(value, locations, weights, queries=value.shape[1])
    n, s, heads, ch = value.shape
    assert moved == 4 * (value.numel() + locations.numel() + weights.numel() + n * s * heads * ch)
    assert bk.H200_PEAK_GBPS == 4800.0


# --- TensorRT CUDA graphs: bounded per-shape cache, thread-local capture -----------------------------------------

def test_shape_graph_cache_is_lru_and_bounded():
    from vita_deploy.runtime.tensorrt_engine import ShapeGraphCache

    cache = ShapeGraphCache(capacity=2)
    made = []
    capture = lambda key: made.append(key) or f"graph{key}"  # noqa: E731
    assert cache.get(1, capture) == "graph1" and cache.get(2, capture) == "graph2"
    assert cache.get(1, capture) == "graph1"  # hit: no recapture, 1 is now the most recent
    cache.get(3, capture)  # evicts 2, the least recently used
    assert cache.keys() == [1, 3] and made == [1, 2, 3] and cache.captures == 3
    cache.get(2, capture)
    assert cache.keys() == [3, 2] and made == [1, 2, 3, 2]
    with pytest.raises(ValueError, match="capacity"):
        ShapeGraphCache(0)


class _StandInGraph:
    """A captured graph's stand-in: replay computes outputs from the static input buffers (out = 2 * x + 1)."""

    def __init__(self, inputs, outputs):
        self.inputs, self.outputs, self.replays = inputs, outputs, 0

    def replay(self):
        self.replays += 1
        self.outputs["y"].copy_(2 * self.inputs["x"] + 1)


def test_tensorrt_graph_replay_per_shape_with_a_stand_in_engine(monkeypatch):
    from vita_deploy.runtime import tensorrt_engine as te

    engine = object.__new__(te.TensorRTEngine)  # the engine's own _infer_graph; capture replaced by a stand-in
    engine._graphs = te.ShapeGraphCache(2)
    captured = []

    def capture(feeds, stream):
        inputs = {k: torch.empty_like(v) for k, v in feeds.items()}
        outputs = {"y": torch.empty_like(feeds["x"])}
        captured.append(tuple(feeds["x"].shape))
        return te._Graph(_StandInGraph(inputs, outputs), inputs, outputs)
    engine._capture = capture
    rng = torch.Generator().manual_seed(0)
    for shape in [(18, 4), (18, 4), (5, 4), (18, 4), (7, 4), (5, 4)]:
        x = torch.randn(*shape, generator=rng)
        out = engine._infer_graph({"x": x}, stream=None)
        torch.testing.assert_close(out["y"], 2 * x + 1)
        assert out["y"].data_ptr() != engine._graphs._entries[te.shape_key({"x": x})].outputs["y"].data_ptr()
    # (18,4) captured once and reused; (5,4) evicted by (7,4) (capacity 2), captured again
    assert captured == [(18, 4), (5, 4), (7, 4), (5, 4)]


def test_tensorrt_capture_uses_thread_local_mode(monkeypatch):
    from vita_deploy.runtime import tensorrt_engine as te

    modes = []

    @contextlib.contextmanager
    def graph(g, stream=None, capture_error_mode="global", **kw):
        modes.append(capture_error_mode)
        yield

    class Stream:
        cuda_stream = 0

        def wait_stream(self, other):
            pass

    class Context:
        runs = 0

        def execute_async_v3(self, handle):
            Context.runs += 1
            return True
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    engine = object.__new__(te.TensorRTEngine)
    engine._stream, engine.context = Stream(), Context()
    engine._bind = lambda feeds: (dict(feeds), {"y": torch.zeros(1)})
    entry = engine._capture({"x": torch.zeros(1)}, Stream())
    assert modes == ["thread_local"] and Context.runs == 2 and entry.graph == "graph"


# --- ONNX Runtime: outputs bound to torch buffers, CPU fallback refused -------------------------------------------

@pytest.fixture(scope="module")
def affine_onnx(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n"])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1, 2, 3, 4, 5, 6])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("ReduceSum", ["y"], ["z"], keepdims=0, axes=[1])]
    graph = helper.make_graph(nodes, "affine", [x], [y, z], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    path = tmp_path_factory.mktemp("ort") / "affine.onnx"
    onnx.save(model, str(path))
    return path


def test_ort_binds_outputs_to_torch_buffers(affine_onnx, monkeypatch):
    """The CUDA path's binding, run with the CPU provider (device "cpu" buffers instead of CUDA ones)."""
    from vita_deploy.runtime.ort_engine import OrtEngine

    engine = OrtEngine(affine_onnx, "cpu")
    w = torch.arange(1, 7, dtype=torch.float64).view(3, 2)
    allocated = []
    real_empty = torch.empty

    def empty(*a, **k):
        t = real_empty(*a, **k)
        allocated.append(t)
        return t
    monkeypatch.setattr(torch, "empty", empty)
    rng = torch.Generator().manual_seed(1)
    for n in (4, 4, 9, 4):
        x = torch.randn(n, 3, generator=rng)
        out = engine._infer_bound({"x": x})
        ref = x.double() @ w
        torch.testing.assert_close(out["y"].double(), ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out["z"].double(), ref.sum(1), rtol=1e-6, atol=1e-5)
        if n == 4 and len(engine._output_shapes) == 1 and allocated:  # second call with n = 4: torch buffers
            assert out["y"].data_ptr() in {t.data_ptr() for t in allocated}
    assert set(engine._output_shapes) == {((4, 3),), ((9, 3),)}
    assert engine._output_shapes[((9, 3),)] == {"y": (9, 2), "z": (9,)}
    assert len(allocated) == 2 * 2  # two outputs, bound on the 2nd and 4th call (both n = 4)


def test_ort_refuses_a_session_that_fell_back_to_cpu(affine_onnx, monkeypatch):
    import onnxruntime as ort

    from vita_deploy.runtime.ort_engine import OrtEngine

    class FellBack:  # what InferenceSession gives when the CUDA provider fails to load: CPU only
        def __init__(self, path, options, providers):
            self.asked = providers

        def get_providers(self):
            return ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    with pytest.raises(RuntimeMismatchError, match=r"could not start its CUDA provider .*affine\.onnx"):
        OrtEngine(affine_onnx, "cuda")


# --- feature store: one host pool, sliced ----------------------------------------------------------------------

def test_host_pool_slices_blocks_frame_aligned():
    blocks = []

    def allocator(nbytes):
        blocks.append(nbytes)
        return plain_allocator(nbytes)
    frame = (3, 5, 7)  # 105 float32 = 420 bytes per frame
    pool = HostPool(allocator, block_bytes=2048)  # 4 frames per block, 368 bytes unused
    views = pool.take(6, frame, torch.float32)
    assert [v.shape[0] for v in views] == [4, 2] and blocks == [2048, 2048]
    views += pool.take(3, frame, torch.float32)  # fills block 2 (2 more), then a third block
    assert [v.shape[0] for v in views] == [4, 2, 2, 1] and len(blocks) == 3
    ptrs = [v.data_ptr() for v in views]
    assert ptrs[1] == pool.blocks[1].data_ptr() and ptrs[2] == ptrs[1] + 2 * 420  # contiguous within a block
    assert all(v.is_contiguous() and v.dtype == torch.float32 and v.shape[1:] == frame for v in views)
    assert pool.reserved_bytes == 3 * 2048
    big = HostPool(allocator, block_bytes=1024).take(1, (600,), torch.float32)  # 2400 B frame > block
    assert big[0].shape == (1, 600) and blocks[-1] == 4096  # raised to the next power of two


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_feature_store_host_tier_through_the_pool(dtype):
    rng = torch.Generator().manual_seed(2)
    allocated = []
    store = FeatureStore("cpu", host_budget_mb=None, dtype=dtype,
                         host_allocator=lambda n: allocated.append(n) or plain_allocator(n))
    store.host_pool.block_bytes = 5 * 4 * 6 * 8 * torch.empty((), dtype=dtype).element_size()  # 5 frames
    chunks = [torch.randn(n, 4, 6, 8, generator=rng) for n in (3, 7, 1, 6)]
    for c in chunks:
        store.append(c)
    everything = torch.cat(chunks).to(dtype).float()
    assert store.num_frames == 17 and len(allocated) == 4  # 17 frames in blocks of 5
    assert store.bytes_host == everything.numel() * torch.empty((), dtype=dtype).element_size()
    for start, stop in [(0, 17), (2, 11), (4, 5), (9, 10), (16, 17)]:
        assert torch.equal(store.get(start, stop), everything[start:stop])
    store.clear()
    assert store.host_pool.reserved_bytes == 0 and store.num_frames == 0
    store.append(chunks[0])
    assert torch.equal(store.get(0, 3), chunks[0].to(dtype).float())
    assert np.isfinite(store.get(0, 3).numpy()).all()
