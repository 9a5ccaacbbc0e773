"""Our TensorRT plugin through NVIDIA's own `tensorrt.plugin` layer (from the `tensorrt-cu13-bindings` wheel), with
stand-ins only for TensorRT's compiled core (tests/trt_core_standin.py): registration and NVIDIA's validation of
every decorated function, the I/O and type descriptors, and the ahead-of-time implementation driven as TensorRT's
builder drives it (create the AOT plugin, output types and shapes, format combinations, launch parameters), its
launch parameters evaluated for concrete sizes and checked against the kernel's PTX parameter list. What only a GPU
with datacenter TensorRT can show (the engine build and run) is `test_plugin_registers_with_tensorrt` in
test_vita_plugin.py and the GPU suite."""
import math
import re

import pytest
import torch

from trt_core_standin import DataType, DynamicPluginTensorDesc, Expr, ExprBuilder, LaunchParams, PluginTensorDesc
from trt_core_standin import SymExprSetter, plugin_layer, plugin_layer_dir
from vita_deploy.engines import vita_plugin as VP
from vita_deploy.kernels.ms_deform_attn import DEFAULT_BLOCK_Q, DEFAULT_NUM_WARPS, launch_grid

pytestmark = pytest.mark.skipif(plugin_layer_dir() is None, reason="NVIDIA's plugin layer is not installed: the dev "
                                "extra pins tensorrt-cu13-bindings (pip install -e '.[dev]')")
triton = pytest.importorskip("triton", reason="the AOT implementation compiles the Triton kernel to PTX")

HEADS, CHANNELS, LEVELS, POINTS = 8, 32, 3, 4  # r50's pixel decoder


@pytest.fixture
def fresh_registration(monkeypatch):
    """Each test registers in its own stand-in TensorRT: forget this process's registration outcome."""
    monkeypatch.setattr(VP, "_registered", None, raising=False)
    monkeypatch.setattr(VP, "_failure", None, raising=False)
    getattr(VP.register, "cache_clear", lambda: None)()  # (a functools.cache registration would remember too)


def _descs(value_dtype: DataType):
    """Inputs as TensorRT describes them at build time: value (N, S, M, D), spatial_shapes (L, 2),
    level_start_index (L,), sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P); N, S and Lq
    dynamic (-1), the rest fixed."""
    dims = [(-1, -1, HEADS, CHANNELS), (LEVELS, 2), (LEVELS,), (-1, -1, HEADS, LEVELS, POINTS, 2),
            (-1, -1, HEADS, LEVELS, POINTS)]
    types = [value_dtype, DataType.INT32, DataType.INT32, DataType.FLOAT, DataType.FLOAT]
    return [DynamicPluginTensorDesc(PluginTensorDesc(d, t)) for d, t in zip(dims, types)]


def _dim_exprs():
    """Symbolic input shapes: N, S, Lq named; the compiled sizes constant."""
    c, n, s, lq = Expr.constant, Expr.sym("N"), Expr.sym("S"), Expr.sym("Lq")
    return [[n, s, c(HEADS), c(CHANNELS)], [c(LEVELS), c(2)], [c(LEVELS)],
            [n, lq, c(HEADS), c(LEVELS), c(POINTS), c(2)], [n, lq, c(HEADS), c(LEVELS), c(POINTS)]]


@pytest.mark.parametrize("value_dtype", [DataType.FLOAT, DataType.HALF])
def test_plugin_registers_and_builds_its_kernel_through_nvidias_plugin_layer(value_dtype, fresh_registration,
                                                                            monkeypatch):
    from vita_deploy.kernels import ptx as P

    with plugin_layer() as (trt, trtp):
        assert VP.supports_aot_plugins(trt) == (True, "")
        assert VP.register() == VP.PLUGIN_ID  # NVIDIA's validation of register / autotune / aot_impl
        creator = trt.get_plugin_registry().get_creator("ms_deform_attn", "1", "vita_deploy")
        assert creator is not None
        # What TensorRT's parser does for a node with aot=1: create the plugin from its creator, strictly AOT.
        plugin = creator.create_plugin("ms_deform_attn", "vita_deploy", trt.PluginFieldCollection([]),
                                       trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.STRICT_AOT)
        assert type(plugin).__name__ == "_TemplateAOTPlugin"
        inputs = _descs(value_dtype)
        assert plugin.get_num_outputs() == 1
        assert plugin.get_output_data_types([d.desc.type for d in inputs], [len(d.desc.dims) for d in inputs]) == [
            value_dtype]
        (out_exprs,) = plugin.get_output_shapes(_dim_exprs(), [], ExprBuilder())
        env = dict(N=6, S=1360, Lq=1360)
        assert [e.eval(**env) for e in out_exprs] == [6, 1360, HEADS, CHANNELS]
        # The type combinations TensorRT may choose: ours parsed by NVIDIA's AutoTuneCombination.
        output = DynamicPluginTensorDesc(PluginTensorDesc((-1, -1, HEADS, CHANNELS), value_dtype))
        combos = plugin.get_supported_format_combinations(inputs + [output], len(inputs))
        types = [c.type for c in combos]
        rows = [types[i:i + 6] for i in range(0, len(types), 6)]
        expected = [[v, DataType.INT32, DataType.INT32, DataType.FLOAT, DataType.FLOAT, v]
                    for v in (DataType.FLOAT, DataType.HALF, DataType.BF16)]
        assert sorted(rows, key=str) == sorted(expected, key=str)
        plugin.configure_plugin([d for d in inputs], [output])
        assert plugin.get_valid_tactics() == []
        plugin.set_tactic(0)
        # The ahead-of-time implementation, as the builder calls it on an sm_90 GPU.
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
        launch, extras = LaunchParams(), SymExprSetter()
        plugin.get_launch_params(_dim_exprs(), inputs + [output], len(inputs), launch, extras, ExprBuilder())
        name, ptx = plugin.get_kernel([d.desc for d in inputs], [output.desc])

    for env in (dict(N=1, S=100, Lq=100), dict(N=18, S=4760, Lq=4760), dict(N=6, S=1360, Lq=33)):
        grid = tuple(getattr(launch, f"grid_{a}").expr.eval(**env) for a in "xyz")
        assert grid == launch_grid(env["N"], env["Lq"], HEADS, DEFAULT_BLOCK_Q)
        assert (launch.block_x.expr.eval(), launch.block_y.expr.eval(), launch.block_z.expr.eval()) == (
            DEFAULT_NUM_WARPS * 32, 1, 1)
        assert launch.shared_mem.expr.eval() == 0
        assert [extras.exprs[i].expr.eval(**env) for i in range(extras.nbSymExprs)] == [env["N"], env["S"], env["Lq"]]
    assert all(extras.exprs[i].dtype.name == "INT32" for i in range(extras.nbSymExprs))
    # The PTX TensorRT will launch: its entry, and one parameter per input, per int extra, per output, in order.
    header = P.read_ptx(ptx.decode())
    assert header.entry == name.decode() and header.target == "sm_90a"
    # the block TensorRT launches is the one the kernel was compiled for (`.reqntid`), with no shared memory
    threads = re.search(r"\.reqntid\s+([\d,\s]+)", ptx.decode()).group(1).split(",")
    assert math.prod(int(t) for t in threads) == DEFAULT_NUM_WARPS * 32 and ".shared" not in ptx.decode()
    assert header.params == (".u64",) * 5 + (".u32",) * extras.nbSymExprs + (".u64",)
    assert header.params == P.expected_params(0)


def test_registration_failure_is_reported_once_with_its_cause(fresh_registration):
    calls = []

    with plugin_layer() as (_trt, trtp):
        real_register = trtp.register

        def failing_register(plugin_id, *args, **kwargs):
            calls.append(plugin_id)
            raise ValueError("simulated: the layer refused the description")

        trtp.register = failing_register
        with pytest.raises(VP.PluginRegistrationError) as first:
            VP.register()
        with pytest.raises(VP.PluginRegistrationError) as second:
            VP.register()  # not attempted again: the same error, not "already has a definition"
        trtp.register = real_register
    assert calls == [VP.PLUGIN_ID]
    assert second.value is first.value
    assert isinstance(first.value.__cause__, ValueError)
    assert "simulated: the layer refused the description" in str(first.value)


def test_builder_registers_the_plugin_only_for_graphs_that_use_it(tmp_path, monkeypatch):
    """A graph without our plugin's nodes builds even where registering it would fail (as every build did on
    datacenter TensorRT >= 10.9 when the registration was broken); `uses_vita_plugin` tells the graphs apart."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (dev extras)")
    from test_engines import ConvRelu, _export
    from test_export import exported
    from vita_deploy.engines import builder as B

    onnx_path = _export(ConvRelu(), (torch.randn(2, 3, 16, 16),), tmp_path / "conv.onnx", ["images"],
                        {"images": {0: "N"}})

    def must_not_register():
        raise AssertionError("registered our plugin for a graph without its nodes")

    monkeypatch.setattr(B, "supports_aot_plugins", lambda trt: (True, ""))
    monkeypatch.setattr(B, "register_vita_plugin", must_not_register)
    sidecar = B.build_engine(onnx_path, tmp_path / "conv.engine")
    assert sidecar["builder"]["plugins"] == [] and (tmp_path / "conv.engine").stat().st_size > 0
    assert not VP.uses_vita_plugin(onnx_path)
    assert VP.uses_vita_plugin(exported("tiny", "vita-plugin", graphs="frame_detector") / "frame_detector.onnx")
