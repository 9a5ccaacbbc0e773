"""Our deformable-attention TensorRT plugin (`--deform-attn vita-plugin`): the export's nodes, ONNX Runtime parity
with eager, the plugin's pure shape/launch functions, and the builder's refusal where TensorRT cannot host it."""
from __future__ import annotations

import importlib.util
import types

import onnx
import pytest
import torch

from test_export import errors, exported, random_model
from vita_deploy.config import get_config
from vita_deploy.engines import vita_plugin as VP
from vita_deploy.export import load_manifest
from vita_deploy.export.plugin import VITA_PLUGIN
from vita_deploy.kernels.ms_deform_attn import launch_grid
from vita_deploy.runtime.ort_export import ort_engine


def test_vita_plugin_export_has_one_aot_node_per_call_with_fp32_coordinates():
    for precision in ("fp32", "fp16"):
        path = exported("tiny", "vita-plugin", precision, graphs="frame_detector") / "frame_detector.onnx"
        model = onnx.load(path)
        nodes = [n for n in model.graph.node if n.op_type == VITA_PLUGIN.op_type]
        assert len(nodes) == get_config("tiny").pixel_decoder.num_layers
        assert not any(n.op_type in ("GridSample", "MultiscaleDeformableAttnPlugin_TRT") for n in model.graph.node)
        infos = {v.name: v.type.tensor_type for v in model.graph.value_info}
        value_type = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT
        for node in nodes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert node.domain == "vita_deploy" and attrs == {"plugin_namespace": b"vita_deploy", "aot": 1}
            types_ = [infos[i].elem_type for i in node.input]
            assert types_ == [value_type, onnx.TensorProto.INT32, onnx.TensorProto.INT32, onnx.TensorProto.FLOAT,
                              onnx.TensorProto.FLOAT]  # locations and weights stay fp32 in the fp16 graph
            assert [len(infos[i].shape.dim) for i in node.input] == [4, 2, 1, 6, 5]
            assert infos[node.output[0]].elem_type == value_type
        manifest = load_manifest(path.parent)
        assert manifest["deform_attn"] == "vita-plugin" and manifest["plugins"] == [VITA_PLUGIN.op_type]
        assert manifest["custom_opsets"] == {"vita_deploy": 1}
        assert manifest["graphs"]["frame_detector"]["custom_ops"] == [
            {"op_type": "ms_deform_attn", "domain": "vita_deploy", "plugin_version": "1", "aot": 1,
             "count": len(nodes)}]


@pytest.mark.parametrize("precision,threshold", [("fp32", 1e-5), ("fp16", 1e-2)])
def test_vita_plugin_graph_runs_in_ort_with_parity_to_eager(precision, threshold):
    engine = ort_engine(exported("tiny", "vita-plugin", precision, graphs="frame_detector"), "frame_detector")
    model = random_model("tiny")
    for n, h, w in ((1, 64, 64), (2, 96, 160)):
        x = torch.randn(n, 3, h, w)
        ours = engine.infer({"images": x})
        with torch.no_grad():
            ref = dict(zip(("frame_queries", "mask_features"), model.frame_detector(x)))
        for name in ref:
            abs_err, rel = errors(ours[name], ref[name])
            print(f"\nvita-plugin {precision} N={n} {h}x{w} {name}: max abs {abs_err:.2e}, rel {rel:.2e}")
            assert rel <= threshold


class FakeExpr:
    """Stands in for TensorRT's ShapeExpr: arithmetic builds a string, constants know their value."""

    def __init__(self, text, value=None):
        self.text, self.value = str(text), value

    @property
    def is_constant(self):
        return self.value is not None

    def constant_value(self):
        return self.value

    def _op(self, other, sym):
        return FakeExpr(f"({self.text}{sym}{getattr(other, 'text', other)})")

    __add__ = lambda self, o: self._op(o, "+")  # noqa: E731
    __sub__ = lambda self, o: self._op(o, "-")  # noqa: E731
    __mul__ = lambda self, o: self._op(o, "*")  # noqa: E731
    __floordiv__ = lambda self, o: self._op(o, "//")  # noqa: E731


def test_plugin_shape_dtype_launch_and_extra_argument_functions():
    value, loc = (18, 4760, 8, 32), (18, 4760, 8, 3, 4, 2)
    assert VP.output_shape(value, loc) == (18, 4760, 8, 32)
    assert VP.extra_args(value, loc) == (18, 4760, 4760)  # (N, S, Lq): the kernel's int arguments, in order
    assert VP.kernel_constants(value, loc) == {"heads": 8, "channels": 32, "levels": 3, "points": 4}
    params = VP.launch_params(value, loc, block_q=32, num_warps=4, shared=0)
    assert (params["grid_x"], params["grid_y"], params["grid_z"]) == launch_grid(18, 4760, 8, 32) == (149, 144, 1)
    assert (params["block_x"], params["block_y"], params["block_z"], params["shared_mem"]) == (128, 1, 1, 0)
    # Symbolic: dynamic N and Lq stay expressions, the compiled constants must be fixed.
    n, s, lq = FakeExpr("N"), FakeExpr("S"), FakeExpr("Lq")
    sym_value, sym_loc = (n, s, FakeExpr("8", 8), FakeExpr("32", 32)), (n, lq, FakeExpr("8", 8), FakeExpr("3", 3),
                                                                         FakeExpr("4", 4), FakeExpr("2", 2))
    sym = VP.launch_params(sym_value, sym_loc, 32, 4, 0, div=lambda a, b: FakeExpr(f"cdiv({a.text},{b})"))
    assert sym["grid_x"].text == "cdiv(Lq,32)" and sym["grid_y"].text == "(N*8)"
    assert [e.text for e in VP.extra_args(sym_value, sym_loc)] == ["N", "S", "Lq"]
    assert VP.kernel_constants(sym_value, sym_loc)["channels"] == 32
    with pytest.raises(ValueError, match="fixed heads"):
        VP.kernel_constants((n, s, FakeExpr("M"), FakeExpr("32", 32)), sym_loc)
    combos = [p.strip() for p in VP.TYPE_COMBINATIONS.split(",")]
    assert len(combos) == 6 and combos[1:3] == ["INT32", "INT32"] and combos[0] == combos[5]
    assert VP.PLUGIN_ID == "vita_deploy::ms_deform_attn"


def test_which_tensorrt_can_host_the_plugin():
    rtx = types.ModuleType("tensorrt_rtx_bindings")
    rtx.__version__ = "1.7.1.116"
    ok, why = VP.supports_aot_plugins(rtx)
    assert not ok and "TensorRT-RTX" in why
    old = types.ModuleType("tensorrt")
    old.__version__ = "10.8.0.43"
    ok, why = VP.supports_aot_plugins(old)
    assert not ok and ">= 10.9" in why


def test_builder_refuses_a_vita_plugin_export_on_tensorrt_rtx(tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (dev extras)")
    from vita_deploy.engines.backend import load_backend
    from vita_deploy.engines.errors import PluginMissingError
    from vita_deploy.engines.manifest import build_from_manifest

    backend = load_backend()
    if not backend.is_rtx:
        pytest.skip("datacenter TensorRT is installed here; the refusal is for TensorRT-RTX")
    export = exported("tiny", "vita-plugin", graphs="frame_detector")
    with pytest.raises(PluginMissingError) as info:
        build_from_manifest(export / "manifest.json", tmp_path, backend=backend)
    assert "--deform-attn native" in str(info.value) and "TensorRT-RTX" in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing was written


def _datacenter_tensorrt_with_aot():
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt if VP.supports_aot_plugins(tensorrt)[0] else None


@pytest.mark.skipif(_datacenter_tensorrt_with_aot() is None,
                    reason="needs datacenter TensorRT >= 10.9 with tensorrt.plugin (cannot be installed on this "
                           "project's machines; TensorRT-RTX cannot host Python plugins)")
def test_plugin_registers_with_tensorrt():
    import tensorrt as trt

    assert VP.register() == VP.PLUGIN_ID
    creator = trt.get_plugin_registry().get_creator("ms_deform_attn", "1", "vita_deploy")
    assert creator is not None
