"""ONNX export: tensor parity in ONNX Runtime vs eager, plugin form, fp16 graphs, and TensorRT-RTX builds."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vita_deploy.config import get_config
from vita_deploy.export.onnx_export import ExportError, ExportOptions, export_model, load_manifest
from vita_deploy.export.ort import ort_engine
from vita_deploy.modeling.model import build_model

FP32_REL = 1e-4  # max |ORT - eager| / max |eager|, per output


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    abs_err = (out.float() - ref.float()).abs().max().item()
    return abs_err, abs_err / max(ref.abs().max().item(), 1e-12)


def tiny_model():
    torch.manual_seed(0)
    return build_model(get_config("tiny")).eval()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def native_export(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("tiny_native")
    export_model(tiny, out, ExportOptions(deform_attn="native", max_frames=64), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def plugin_export(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("tiny_plugin")
    export_model(tiny, out, ExportOptions(deform_attn="plugin", max_frames=64), log=lambda _: None)
    return out


def check_parity(export_dir, model, sizes=((1, 96, 128), (3, 160, 224), (2, 64, 64)), frames=(1, 6, 7, 13),
                 threshold=FP32_REL):
    detector = ort_engine(export_dir, "frame_detector")
    vita = ort_engine(export_dir, "vita_head")
    report = {}
    for n, h, w in sizes:
        x = torch.randn(n, 3, h, w)
        with torch.no_grad():
            ref = model.frame_detector(x)
        out = detector.infer({"images": x})
        for name, r in zip(("frame_queries", "mask_features"), ref):
            report[f"detector {n}x{h}x{w} {name}"] = rel_err(out[name], r)
    for t in frames:
        fq = torch.randn(t, model.cfg.frame_decoder.num_queries, model.cfg.vita.hidden_dim)
        with torch.no_grad():
            ref = model.vita_head(fq)
        out = vita.infer({"frame_queries": fq})
        for name, r in zip(("class_logits", "mask_embed"), ref):
            report[f"vita T={t} {name}"] = rel_err(out[name], r)
    worst = max(report.items(), key=lambda kv: kv[1][1])
    print("\n".join(f"{k}: max abs {a:.2e}, rel {r:.2e}" for k, (a, r) in report.items()))
    assert worst[1][1] < threshold, worst
    return report


def test_native_fp32_parity_tiny(native_export, tiny):
    check_parity(native_export, tiny)


def test_manifest_describes_the_graphs(native_export):
    m = load_manifest(native_export)
    fd, vh = m["graphs"]["frame_detector"], m["graphs"]["vita_head"]
    assert [i["name"] for i in fd["inputs"]] == ["images"] and fd["inputs"][0]["dtype"] == "float32"
    assert fd["inputs"][0]["shape"][1] == 3 and isinstance(fd["inputs"][0]["shape"][0], str)  # symbolic N
    assert [o["name"] for o in fd["outputs"]] == ["frame_queries", "mask_features"]
    assert [o["name"] for o in vh["outputs"]] == ["class_logits", "mask_embed"]
    assert vh["profiles"]["frame_queries"]["max"][0] == 64 and vh["profiles"]["frame_queries"]["min"][0] == 1
    assert m["deform_attn"] == "native" and m["precision"] == "fp32" and m["config"]["name"] == "tiny"
    assert m["exporter"]["opset"] >= 17


def test_plugin_nodes_follow_nvidia_layout_and_pass_the_checker(plugin_export):
    import onnx
    model = onnx.load(plugin_export / "frame_detector.onnx")
    nodes = [n for n in model.graph.node if n.op_type == "MultiscaleDeformableAttnPlugin_TRT"]
    assert len(nodes) == get_config("tiny").pixel_decoder.num_layers
    infos = {v.name: v for v in model.graph.value_info}
    for node in nodes:
        assert {a.name: a.s.decode() for a in node.attribute} == {"plugin_version": "2"}
        assert len(node.input) == 5 and len(node.output) == 1
        for i in (1, 2):  # spatial_shapes, level_start_index: int32
            assert infos[node.input[i]].type.tensor_type.elem_type == onnx.TensorProto.INT32
        assert len(infos[node.output[0]].type.tensor_type.shape.dim) == 4
    assert any(o.domain == nodes[0].domain for o in model.opset_import)
    # A fresh process that never registered our schema: full check with shape inference passes.
    code = (f"import onnx; m = onnx.load({str(plugin_export / 'frame_detector.onnx')!r}); "
            "onnx.checker.check_model(m, full_check=True); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_plugin_graph_runs_in_ort_and_equals_native(plugin_export, native_export):
    x = torch.randn(2, 3, 96, 160)
    plugin = ort_engine(plugin_export, "frame_detector").infer({"images": x})
    native = ort_engine(native_export, "frame_detector").infer({"images": x})
    for name in ("frame_queries", "mask_features"):
        abs_err, rel = rel_err(plugin[name], native[name])
        assert rel < 1e-5, (name, abs_err, rel)


def test_bad_export_arguments():
    with pytest.raises(ExportError, match="multiple of 32"):
        ExportOptions(height=100, width=128)
    with pytest.raises(ExportError, match="both"):
        ExportOptions(height=96)
    with pytest.raises(ExportError, match="manifest.json does not exist"):
        load_manifest("/nonexistent")


# -- fp16 ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("tiny_fp16")
    export_model(tiny_model(), out, ExportOptions(deform_attn="native", precision="fp16", max_frames=64),
                 log=lambda _: None)
    return out


def test_fp16_graph_keeps_fp32_islands(fp16_export):
    import onnx
    model = onnx.load(fp16_export / "frame_detector.onnx")
    fp16_inits = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_inits) > 10  # the weights are half precision
    casts_to_fp32 = [n for n in model.graph.node if n.op_type == "Cast" and any(
        a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)]
    assert len(casts_to_fp32) > 5  # fp32 islands
    softmax_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Softmax"}
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info)}
    assert softmax_inputs and all(types.get(i) == onnx.TensorProto.FLOAT for i in softmax_inputs)
    m = load_manifest(fp16_export)
    assert m["precision"] == "fp16" and m["graphs"]["frame_detector"]["inputs"][0]["dtype"] == "float32"


# -- TensorRT-RTX ahead-of-time builds --------------------------------------------------------------------------

def _rtx_available() -> bool:
    try:
        import tensorrt_rtx_bindings  # noqa: F401
        return True
    except ImportError:
        return False


needs_rtx = pytest.mark.skipif(not _rtx_available(), reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) is not "
                               "installed; `make test` installs it with the dev extras")


@needs_rtx
@pytest.mark.parametrize("which", ["native_export", "fp16_export"])
def test_tensorrt_rtx_builds_native_graphs(which, request, tmp_path):
    from vita_deploy.engines.builder import build_from_manifest
    export_dir = request.getfixturevalue(which)
    results = build_from_manifest(export_dir / "manifest.json", tmp_path)
    for graph, sidecar in results.items():
        engine = tmp_path / f"{graph}.engine"
        assert engine.stat().st_size > 1000 and sidecar["tensorrt_flavour"] == "tensorrt-rtx"
        saved = json.loads((tmp_path / f"{graph}.engine.json").read_text())
        assert saved["onnx_sha256"] == load_manifest(export_dir)["graphs"][graph]["sha256"]
        assert saved["target"].startswith("SM89")
    assert not list(tmp_path.glob("*.tmp"))


@needs_rtx
def test_tensorrt_rtx_refuses_plugin_graphs_clearly(plugin_export, tmp_path):
    # In a subprocess: a parser that meets an unknown plugin must not take the test run down with it.
    code = ("import sys; sys.path.insert(0, '.'); from vita_deploy.engines.builder import build_from_manifest, "
            "EngineBuildError\ntry:\n    build_from_manifest(sys.argv[1], sys.argv[2])\nexcept EngineBuildError as e:\n"
            "    print('EngineBuildError:', e)")
    proc = subprocess.run([sys.executable, "-c", code, str(plugin_export / "manifest.json"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert "EngineBuildError" in proc.stdout and "--deform-attn native" in proc.stdout, proc.stdout + proc.stderr


# -- r50 at one small size -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def r50_model():
    torch.manual_seed(0)
    return build_model(get_config("r50")).eval()


@pytest.fixture(scope="module")
def r50_export(tmp_path_factory, r50_model):
    out = tmp_path_factory.mktemp("r50_native")
    export_model(r50_model, out, ExportOptions(deform_attn="native", max_frames=36), log=lambda _: None)
    return out


def test_r50_native_fp32_parity(r50_export, r50_model):
    check_parity(r50_export, r50_model, sizes=((1, 128, 128), (2, 96, 160)), frames=(1, 7))


@needs_rtx
def test_tensorrt_rtx_builds_r50(r50_export, tmp_path):
    from vita_deploy.engines.builder import build_from_manifest
    results = build_from_manifest(r50_export / "manifest.json", tmp_path)
    assert set(results) == {"frame_detector", "vita_head"}
