"""Swin export: a narrowed Swin VITA model through the same dynamo ONNX path with N, H, W symbolic (window
padding and shifted-window masks inside the graph), fp32 and fp16, parity in ONNX Runtime at sizes whose maps
need window padding, are smaller than a window, or are not square; and a TensorRT-RTX ahead-of-time build.

The narrow model is Swin with embed 16, depths 2/2/2/2 (a shifted block in every stage), window 7, under `tiny`
heads with the pixel decoder cut to one layer; only the frame detector is exported (VITA's graph does
not depend on the backbone and is tested in test_export.py). The full Swin-L graphs are measured in the README's
zoo table instead (minutes per export and build).
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch

from test_export import FP16_REL, FP32_REL, check_parity
from vita_deploy.config import SwinConfig, get_config
from vita_deploy.export import ExportOptions, export_model, load_manifest
from vita_deploy.modeling.model import build_model

ROOT = Path(tempfile.mkdtemp(prefix="vita_export_swin_"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)
NARROW_SWIN = SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=7)
# 64x64: res5 2x2 inside one padded 7x7 window; 96x160: padding in both axes; 224x96: portrait, N=2; 64x224 and
# 224x64 at N=1: res4 has one window row and two columns (two rows, one column): a one-frame chunk.
SIZES = ((1, 64, 64), (2, 96, 160), (2, 224, 96), (1, 64, 224), (1, 224, 64))


@functools.lru_cache(maxsize=None)
def swin_model():
    tiny = get_config("tiny")
    cfg = replace(tiny, name="tiny-swin", backbone=NARROW_SWIN,
                  input=replace(tiny.input, min_size_test=224, max_size_test=448),
                  pixel_decoder=replace(tiny.pixel_decoder, num_layers=1))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for p in model.frame_detector.backbone.parameters():  # non-trivial LayerNorms and biases
        p.data.add_(0.02 * torch.randn_like(p))
    return model


@functools.lru_cache(maxsize=None)
def swin_export(precision: str) -> Path:
    out = ROOT / precision
    export_model(swin_model(), out, ExportOptions(deform_attn="native", precision=precision, max_frames=16,
                                                  max_batch=4), log=print, graphs=("frame_detector",))
    return out


@pytest.mark.parametrize("precision, threshold", [("fp32", FP32_REL), ("fp16", FP16_REL)])
def test_swin_export_parity_in_onnxruntime(precision, threshold):
    out = swin_export(precision)
    manifest = load_manifest(out)
    # H and W stay symbolic; the profile's opt is the config's test size (224 short side here; 448 for Swin-L).
    dims = [d.dim_param or d.dim_value for d in
            onnx.load(out / "frame_detector.onnx", load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2] == "height" and dims[3] == "width"
    assert manifest["graphs"]["frame_detector"]["profiles"]["images"]["opt"][2:] == [224, 416]
    assert manifest["graphs"]["frame_detector"]["profiles"]["images"]["max"][2:] == [448, 448]
    assert manifest["config"]["backbone"]["kind"] == "swin"
    check_parity(out, swin_model(), SIZES, (), threshold)


def test_swin_export_builds_with_tensorrt_rtx(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed: `pip install -e "
                              ".[dev]` installs tensorrt-rtx-cu13-libs/-bindings")
    from vita_deploy.engines.manifest import build_from_manifest

    out = swin_export("fp16")
    sidecars = build_from_manifest(out / "manifest.json", tmp_path)
    assert set(sidecars) == {"frame_detector"}
    for graph, sidecar in sidecars.items():
        size = (tmp_path / f"{graph}.engine").stat().st_size
        print(f"\nTensorRT-RTX {trt.__version__} tiny-swin fp16 {graph}: build {sidecar['build_s']:.2f} s, "
              f"engine {size / 2**20:.1f} MiB")
        assert size > 10_000 and all(t["dtype"] == "fp32" for t in sidecar["io"])
