"""An export on ONNX Runtime: its two graphs as `Engine`s and as `run_video` callables.

Plugin-mode graphs run unchanged: a copy of the model gets a local ONNX function with the plugin's name and a
standard-op body (`plugin.with_plugin_function`), which ONNX Runtime inlines. No custom-op library is needed.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx
import torch

from vita_deploy.export.onnx_export import load_manifest
from vita_deploy.export.plugin import PLUGINS, plugins_in, with_plugin_function
from vita_deploy.pipeline.inference import DetectorFn, MaskFeaturesFn, VitaFn
from vita_deploy.runtime.base import graphs_from_engines, mask_features_from_engine
from vita_deploy.runtime.ort_engine import OrtEngine

GRAPHS = ("frame_detector", "vita_head", "mask_features")
INT8_GRAPHS = ("auto", "tensorrt")  # which graph of an INT8 export ONNX Runtime runs on the CPU (`ort_engine`)


def ort_engine(export_dir: str | Path, graph: str, device: torch.device | str = "cpu",
               threads: int | None = None, int8_graph: str = "auto") -> OrtEngine:
    """OrtEngine for graph "frame_detector", "vita_head" or "mask_features" of an export (plugin nodes run as a
    local function).

    int8_graph: for an INT8 export on the CPU, "auto" runs the graph's CPU twin (`cpu_int8` in the manifest: U8S8,
    which the CPU provider fuses into QLinearConv / QLinearMatMul) when it has one; "tensorrt" runs the S8S8
    Q/DQ graph TensorRT builds (ONNX Runtime emulates it in fp32 between Q/DQ pairs: its accuracy, not speed)."""
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, not {graph!r}")
    if int8_graph not in INT8_GRAPHS:
        raise ValueError(f"int8_graph must be one of {INT8_GRAPHS}, not {int8_graph!r}")
    manifest = load_manifest(export_dir)
    entry = manifest["graphs"][graph]
    path = Path(export_dir) / entry["file"]
    if int8_graph == "auto" and torch.device(device).type == "cpu" and entry.get("cpu_int8"):
        return OrtEngine(Path(export_dir) / entry["cpu_int8"]["file"], device, threads)
    if manifest["precision"] == "fp8":  # no CPU FP8 kernels: ORT runs FP8 Q/DQ only with its Q/DQ fusion off
        from vita_deploy.export.quantize import ort_session_options
        return OrtEngine(path, device, threads, session_options=ort_session_options("fp8"))
    if manifest["deform_attn"] not in PLUGINS:
        return OrtEngine(path, device, threads)
    model = onnx.load(str(path))
    if not plugins_in(model):
        return OrtEngine(path, device, threads)
    tmp = Path(tempfile.mkdtemp(prefix="vita_ort_plugin_"))
    try:  # ORT reads the file while creating the session; the copy is not needed afterwards
        onnx.save(with_plugin_function(model), str(tmp / path.name))
        return OrtEngine(tmp / path.name, device, threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ort_graphs(export_dir: str | Path, device: torch.device | str = "cpu", threads: int | None = None,
               int8_graph: str = "auto") -> tuple[DetectorFn, VitaFn]:
    """(DetectorFn, VitaFn) running the export's two ONNX graphs in ONNX Runtime; outputs are float32 tensors."""
    return graphs_from_engines(ort_engine(export_dir, "frame_detector", device, threads, int8_graph),
                               ort_engine(export_dir, "vita_head", device, threads, int8_graph))


def ort_mask_features(export_dir: str | Path, device: torch.device | str = "cpu", threads: int | None = None,
                      int8_graph: str = "auto") -> MaskFeaturesFn | None:
    """The export's mask-feature graph in ONNX Runtime (recompute mode), or None when the export has none
    (exports made before the graph existed: re-export for recompute mode)."""
    if "mask_features" not in load_manifest(export_dir)["graphs"]:
        return None
    return mask_features_from_engine(ort_engine(export_dir, "mask_features", device, threads, int8_graph))
