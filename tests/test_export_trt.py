"""Every `native` export (fp32 and fp16, tiny and r50) parses and builds with TensorRT-RTX, ahead of time for SM89,
on this GPU-less machine, through the project's engine builder. Any parser error fails the test, naming the node."""
from __future__ import annotations

import json

import pytest

from test_export import exported
from vita_deploy.export import load_manifest

trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed: `pip install -e .[dev]` "
                          "installs tensorrt-rtx-cu13-libs/-bindings 1.7.1.116")


@pytest.mark.parametrize("name, precision", [("tiny", "fp32"), ("tiny", "fp16"), ("r50", "fp32"), ("r50", "fp16")])
def test_tensorrt_rtx_builds_native_graphs(name, precision, tmp_path):
    from vita_deploy.engines.manifest import build_from_manifest

    export_dir = exported(name, "native", precision)
    manifest = load_manifest(export_dir)
    sidecars = build_from_manifest(export_dir / "manifest.json", tmp_path)
    assert set(sidecars) == set(manifest["graphs"])
    for graph, info in manifest["graphs"].items():
        sidecar = sidecars[graph]
        print(f"\nTensorRT-RTX {trt.__version__} {name} {precision} {graph}: build {sidecar['build_s']:.2f} s, "
              f"engine {(tmp_path / (graph + '.engine')).stat().st_size / 2**20:.1f} MiB")
        assert (tmp_path / f"{graph}.engine").stat().st_size > 10_000
        io = {t["name"]: t for t in sidecar["io"]}
        assert set(io) == {i["name"] for i in info["inputs"] + info["outputs"]}
        assert all(t["dtype"] == "fp32" for t in io.values())  # float32 I/O in both precisions
        meta = json.loads((tmp_path / f"{graph}.engine.json").read_text())  # the sidecar on disk
        assert meta["onnx_sha256"] == info["sha256"] and meta["profiles"] == info["profiles"]
        assert meta["export"]["deform_attn"] == "native" and meta["target"].startswith("SM89")
        assert (tmp_path / meta["engine"]).stat().st_size == meta["engine_bytes"]
