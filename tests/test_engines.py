"""Engine builder tests: real TensorRT-RTX ahead-of-time builds (SM89) of small ONNX graphs on CPU, trtexec
grammar parsing, error paths, the CLI and the datacenter-TensorRT differences (with a stand-in module). Builds of
the real exports from their manifests (sidecars, profiles, hashes): tests/test_export_trt.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vita_deploy.engines import (Backend, BuildInputError, BuildOptions, ManifestError, PluginMissingError,
                                 PrecisionError, ShapeRange, ShapeSpecError, TensorRTNotInstalledError,
                                 build_engine, build_from_manifest, combine_shape_flags, import_tensorrt,
                                 load_backend, parse_mem_pool_size, parse_shape_spec, sidecar_path)
from vita_deploy.engines.backend import visible_gpu_compute_capability
from vita_deploy.engines.builder import MSDA_PLUGIN
from vita_deploy.files import file_sha256

ROOT = Path(__file__).resolve().parents[1]
MSDA = MSDA_PLUGIN


def _try_backend(module: str | None = None):
    try:
        return load_backend(module)
    except TensorRTNotInstalledError:
        return None


RTX = next((b for b in (_try_backend("tensorrt_rtx"), _try_backend("tensorrt_rtx_bindings")) if b), None)
DATACENTER = _try_backend("tensorrt")
needs_rtx = pytest.mark.skipif(RTX is None, reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) is not installed")
needs_datacenter_gpu = pytest.mark.skipif(
    DATACENTER is None or visible_gpu_compute_capability() is None,
    reason="needs datacenter TensorRT (`import tensorrt`) and a CUDA GPU; neither can be installed on CPU machines")


class ConvRelu(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # q (N, L, 16), k (N, S, 16)
        return torch.softmax(self.proj(q) @ k.transpose(1, 2), dim=-1)  # (N, L, S)


def _export(module: torch.nn.Module, args: tuple, path: Path, names: list[str], dynamic: dict) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=["out"],
                          dynamic_axes=dynamic, dynamo=False, opset_version=17)
    return path


def _plugin_graph(path: Path, op_type: str, domain: str) -> Path:
    """Relu -> <op_type> node in a custom domain: no TensorRT-RTX plugin creator exists for it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node(op_type, ["r"], ["y"], name="msda0", domain=domain, plugin_version="2")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "conv": _export(ConvRelu(), (torch.randn(2, 3, 16, 16),), d / "conv.onnx", ["images"], {"images": {0: "N"}}),
        "two": _export(TwoInputs(), (torch.randn(2, 5, 16), torch.randn(2, 7, 16)), d / "two.onnx", ["q", "k"],
                       {"q": {0: "N", 1: "L"}, "k": {0: "N", 1: "S"}}),
        "msda": _plugin_graph(d / "msda.onnx", MSDA, "trt.plugins"),
        "custom": _plugin_graph(d / "custom.onnx", "MyFancyOp", "my.ops"),
    }


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- trtexec grammars (no TensorRT needed) ------------------------------------------------------------------
def test_shape_spec_parses_like_trtexec():
    assert parse_shape_spec("images:1x3x224x224,b:4") == {"images": (1, 3, 224, 224), "b": (4,)}
    assert parse_shape_spec("in:0:2x3") == {"in:0": (2, 3)}  # name = everything before the last ':'
    assert parse_shape_spec("'in:0':2x3") == {"in:0": (2, 3)}
    assert parse_shape_spec("s:scalar,t:") == {"s": (), "t": ()}
    ranges = combine_shape_flags(None, "q:2x5x16", None)  # only --optShapes: min = opt = max
    assert ranges == {"q": ShapeRange((2, 5, 16), (2, 5, 16), (2, 5, 16))}


@pytest.mark.parametrize("spec", ["images", "images:1x3xa", "images:1x-3", "a:1,,b:2", "a:1,a:2", "'a:1",
                                  ":1x2", "a:1x2x", "a**b:1"])
def test_malformed_shape_specs_raise(spec):
    with pytest.raises(ShapeSpecError) as info:
        parse_shape_spec(spec, "--minShapes")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("flags", [("a:1", None, None), ("a:1", "a:2", None), (None, "a:2", "a:3"),
                                   ("a:1", "a:2", "b:3")])
def test_shape_flag_combinations_follow_trtexec(flags):
    with pytest.raises(ShapeSpecError):
        combine_shape_flags(*flags)


def test_mem_pool_size():
    assert parse_mem_pool_size("workspace:1024") == {"workspace": 1 << 30}
    assert parse_mem_pool_size("workspace:1G,tacticSharedMem:0.5M") == {"workspace": 1 << 30,
                                                                         "tacticSharedMem": 1 << 19}
    assert parse_mem_pool_size("workspace:2048K") == {"workspace": 2 << 20}
    for bad in ("workspace", "workspace:x", "workspace:-1", "cache:10"):
        with pytest.raises(BuildInputError):
            parse_mem_pool_size(bad)


# --- datacenter TensorRT differences, with a stand-in module --------------------------------------------------
def _fake_trt(version: str, has_fp16: bool) -> SimpleNamespace:
    flags = SimpleNamespace(FP16="FP16", TF32="TF32") if has_fp16 else SimpleNamespace(TF32="TF32")
    return SimpleNamespace(__name__="tensorrt", __version__=version, BuilderFlag=flags,
                           NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))


def test_fp16_flag_only_on_tensorrt10():
    trt10 = Backend(_fake_trt("10.13.3.9", has_fp16=True))
    set_flags = []
    config = SimpleNamespace(set_flag=set_flags.append)
    assert trt10.flavour == "tensorrt" and not trt10.strongly_typed_only
    assert trt10.network_flags(fp16_flag=True) == (0, [])  # weakly typed; explicit batch is implicit in 10
    assert trt10.network_flags(fp16_flag=False) == (2, ["STRONGLY_TYPED"])
    trt10.enable_fp16(config)
    assert set_flags == ["FP16"]
    trt11 = Backend(_fake_trt("11.1.0.5", has_fp16=False))
    assert trt11.strongly_typed_only and trt11.network_flags(fp16_flag=False) == (2, ["STRONGLY_TYPED"])
    with pytest.raises(PrecisionError):
        trt11.enable_fp16(config)
    assert set_flags == ["FP16"]


def test_no_tensorrt_names_the_packages():
    with pytest.raises(TensorRTNotInstalledError) as info:
        import_tensorrt("no_such_tensorrt_module")
    assert all(pkg in str(info.value) for pkg in ("tensorrt-rtx-cu13-bindings", "pip install tensorrt"))


# --- real builds with TensorRT-RTX (ahead of time, SM89, no GPU needed) --------------------------------------
@needs_rtx
def test_build_conv_relu_dynamic_batch(graphs, tmp_path):
    engine = tmp_path / "conv.engine"
    options = BuildOptions(shapes=combine_shape_flags("images:1x3x16x16", "images:4x3x16x16", "images:8x3x16x16"),
                           compute_capabilities=("89",), memory_pools={"workspace": 256 << 20},
                           optimization_level=2)
    sidecar = build_engine(graphs["conv"], engine, options, backend=RTX)
    assert engine.stat().st_size == sidecar["engine_bytes"] > 10_000
    on_disk = json.loads(sidecar_path(engine).read_text())
    assert on_disk == json.loads(json.dumps(sidecar))
    assert on_disk["tensorrt_flavour"] == "tensorrt-rtx" and on_disk["tensorrt_version"] == RTX.version
    assert on_disk["compute_capabilities"] == ["89"] and on_disk["target"].startswith("SM89")
    assert on_disk["profiles"] == {"images": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}
    assert on_disk["onnx_sha256"] == file_sha256(graphs["conv"])
    assert on_disk["precision"].startswith("fp32") and on_disk["strongly_typed"] is True
    assert on_disk["io"][0] == {"name": "images", "mode": "input", "shape": [-1, 3, 16, 16], "dtype": "fp32"}
    assert on_disk["io"][1]["shape"] == [-1, 8, 16, 16]
    assert on_disk["builder"]["optimization_level"] == 2
    assert on_disk["builder"]["memory_pools"] == {"workspace": 256 << 20}
    assert 0 < on_disk["build_s"] < 30
    assert _leftovers(tmp_path) == []


@needs_rtx
def test_build_two_inputs_with_wildcard_and_opt_only(graphs, tmp_path):
    ranges = combine_shape_flags("q:1x1x16,k:1x1x16", "q:2x5x16,k:2x7x16", "q:4x9x16,k:4x11x16")
    sidecar = build_engine(graphs["two"], tmp_path / "two.engine", BuildOptions(shapes=ranges), backend=RTX)
    assert sidecar["profiles"]["k"] == {"min": [1, 1, 16], "opt": [2, 7, 16], "max": [4, 11, 16]}
    assert [t["name"] for t in sidecar["io"]] == ["q", "k", "out"]
    # one wildcard covers both inputs; --optShapes alone fixes min = opt = max
    sidecar = build_engine(graphs["two"], tmp_path / "two_fixed.engine",
                           BuildOptions(shapes=combine_shape_flags(None, "*:3x6x16", None)), backend=RTX)
    assert sidecar["profiles"]["q"] == sidecar["profiles"]["k"] == {"min": [3, 6, 16], "opt": [3, 6, 16],
                                                                     "max": [3, 6, 16]}


@needs_rtx
@pytest.mark.parametrize("spec", [("image:1x3x16x16", "image:2x3x16x16", "image:4x3x16x16"),  # unknown name
                                  ("images:1x3x16", "images:2x3x16", "images:4x3x16"),  # wrong rank
                                  ("images:1x3x16x16", "images:2x4x16x16", "images:4x3x16x16"),  # static dim
                                  ("images:4x3x16x16", "images:2x3x16x16", "images:1x3x16x16")])  # min > max
def test_shapes_checked_against_network_inputs(graphs, tmp_path, spec):
    engine = tmp_path / "conv.engine"
    with pytest.raises(ShapeSpecError):
        build_engine(graphs["conv"], engine, BuildOptions(shapes=combine_shape_flags(*spec)), backend=RTX)
    assert not engine.exists() and list(tmp_path.iterdir()) == []


@needs_rtx
@pytest.mark.parametrize("graph,op_type", [("msda", MSDA), ("custom", "MyFancyOp")])
def test_missing_plugin_names_the_node(graphs, tmp_path, graph, op_type):
    engine = tmp_path / "p.engine"
    engine.write_bytes(b"previous engine")
    with pytest.raises(PluginMissingError) as info:
        build_engine(graphs[graph], engine, backend=RTX)
    assert (info.value.node_name, info.value.op_type) == ("msda0", op_type)
    assert ("--deform-attn native" in str(info.value)) == (op_type == MSDA)
    assert engine.read_bytes() == b"previous engine" and _leftovers(tmp_path) == []


@needs_rtx
def test_fp16_flag_refused_on_rtx(graphs, tmp_path):
    with pytest.raises(PrecisionError):
        build_engine(graphs["conv"], tmp_path / "c.engine", BuildOptions(fp16=True), backend=RTX)


@needs_rtx
def test_missing_plugin_library(graphs, tmp_path):
    with pytest.raises(BuildInputError):
        build_engine(graphs["conv"], tmp_path / "c.engine", BuildOptions(plugins=(str(tmp_path / "no.so"),)),
                     backend=RTX)


@needs_rtx
def test_unsupported_compute_capability(graphs, tmp_path):
    with pytest.raises(BuildInputError):
        build_engine(graphs["conv"], tmp_path / "c.engine", BuildOptions(compute_capabilities=("90",)), backend=RTX)


@needs_rtx
def test_cli_end_to_end(graphs, tmp_path):
    engine = tmp_path / "cli" / "conv.engine"
    cmd = [sys.executable, str(ROOT / "engines" / "build.py"), f"--onnx={graphs['conv']}", "--saveEngine", str(engine),
           "--minShapes", "images:1x3x16x16", "--optShapes=images:2x3x16x16", "--maxShapes", "images:4x3x16x16",
           "--memPoolSize", "workspace:512", "--computeCapability", "86,89"]
    env = {**os.environ, "VITA_TENSORRT_MODULE": RTX.trt.__name__}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads(sidecar_path(engine).read_text())
    assert meta["compute_capabilities"] == ["86", "89"] and meta["builder"]["memory_pools"] == {"workspace": 512 << 20}
    assert engine.stat().st_size == meta["engine_bytes"] and _leftovers(engine.parent) == []
    for bad in (["--maxShapes", "images:4x3x16x16"], ["--optShapes", "nope:1x3x16x16"]):  # one parse, one build error
        done = subprocess.run(cmd[:5] + bad, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr and "error:" in done.stderr


@needs_rtx
def test_manifest_errors(graphs, tmp_path):
    manifest = {"format": "vita-deploy-export", "format_version": 1, "precision": "fp32", "deform_attn": "native",
                "graphs": {"conv": {"file": "conv.onnx", "sha256": "0" * 64,
                                    "profiles": {"images": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16],
                                                            "max": [4, 3, 16, 16]}}}}}
    (tmp_path / "conv.onnx").write_bytes(graphs["conv"].read_bytes())
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError):  # the ONNX file is not the one the manifest hashed
        build_from_manifest(path, backend=RTX)
    manifest["graphs"]["conv"]["sha256"] = file_sha256(graphs["conv"])
    path.write_text(json.dumps({**manifest, "deform_attn": "plugin"}))
    with pytest.raises(PluginMissingError):  # refused before parsing: RTX has no plugin library
        build_from_manifest(path, backend=RTX)
    path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ManifestError):
        build_from_manifest(path, backend=RTX)
    path.write_text(json.dumps(manifest))
    results = build_from_manifest(path, tmp_path / "engines", backend=RTX)
    assert results["conv"]["profiles"] == manifest["graphs"]["conv"]["profiles"]
    assert results["conv"]["graph"] == "conv" and (tmp_path / "engines" / "conv.engine").stat().st_size > 0
    with pytest.raises(ManifestError):
        build_from_manifest(tmp_path / "missing" / "manifest.json", backend=RTX)


# --- datacenter TensorRT (only where it and a GPU exist) ------------------------------------------------------
@needs_datacenter_gpu
def test_datacenter_build_for_this_gpu(graphs, tmp_path):
    options = BuildOptions(shapes=combine_shape_flags(None, "images:2x3x16x16", None),
                           timing_cache_file=str(tmp_path / "timing.cache"))
    sidecar = build_engine(graphs["conv"], tmp_path / "c.engine", options, backend=DATACENTER)
    assert sidecar["tensorrt_flavour"] == "tensorrt" and sidecar["target"].startswith("this GPU")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    if not DATACENTER.strongly_typed_only:
        sidecar = build_engine(graphs["conv"], tmp_path / "c16.engine", BuildOptions(fp16=True), backend=DATACENTER)
        assert "FP16" in sidecar["builder"]["builder_flags"]


def _qdq_conv_graph(path: Path, precision: str) -> Path:
    """images (N, 3, 16, 16) -> Q -> DQ -> Conv(DQ(weights)) -> Relu: an explicitly quantized graph in the form
    ModelOpt writes (symmetric, zero points 0; int8 per-tensor activations, per-channel weights; fp8 E4M3)."""
    from onnx import TensorProto, helper, numpy_helper

    qtype = TensorProto.INT8 if precision == "int8" else TensorProto.FLOAT8E4M3FN
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (8, 3, 3, 3)).astype(np.int8)
    if precision == "fp8":
        wq = helper.make_tensor("wq", qtype, w.shape, rng.standard_normal(w.size).astype(np.float32).tolist())
        w_scale = numpy_helper.from_array(np.array(0.01, np.float32), "w_scale")
        w_zero = helper.make_tensor("w_zero", qtype, [], [0.0])
    else:
        wq = numpy_helper.from_array(w, "wq")
        w_scale = numpy_helper.from_array(np.full(8, 0.01, np.float32), "w_scale")
        w_zero = numpy_helper.from_array(np.zeros(8, np.int8), "w_zero")
    x_scale = numpy_helper.from_array(np.array(0.02, np.float32), "x_scale")
    x_zero = helper.make_tensor("x_zero", qtype, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xdq"]),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["w"],
                              **({"axis": 0} if precision == "int8" else {})),
             helper.make_node("Conv", ["xdq", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["out"])]
    graph = helper.make_graph(nodes, "qdq_conv",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8, 16, 16])],
                              [wq, w_scale, w_zero, x_scale, x_zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@needs_rtx
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_build_records_explicit_quantization(tmp_path, precision):
    """A Q/DQ graph builds ahead of time (SM89: FP8 and INT8 tensor cores) and the sidecar's precision says it is
    explicitly quantized, in which 8-bit type: `export --precision int8|fp8` graphs are labelled like this."""
    graph = _qdq_conv_graph(tmp_path / f"qdq_{precision}.onnx", precision)
    options = BuildOptions(shapes=combine_shape_flags("images:1x3x16x16", "images:2x3x16x16", "images:4x3x16x16"),
                           compute_capabilities=("89",), memory_pools={"workspace": 256 << 20},
                           optimization_level=2)
    sidecar = build_engine(graph, tmp_path / "qdq.engine", options, backend=RTX)
    assert sidecar["precision"] == f"{precision} Q/DQ (explicit quantization), fp32 (strongly typed)", sidecar
    assert sidecar["strongly_typed"] is True and (tmp_path / "qdq.engine").stat().st_size > 1000
