"""Run an export in ONNX Runtime: the two graphs as `run_video` callables (plugin nodes via a CPU kernel)."""
from __future__ import annotations

from pathlib import Path

import torch

from vita_deploy.export.onnx_export import load_manifest
from vita_deploy.inference import DetectorFn, VitaFn
from vita_deploy.runtime.base import graphs_from_engines
from vita_deploy.runtime.ort_engine import OrtEngine


def ort_engine(export_dir: str | Path, graph: str, device: torch.device | str = "cpu",
               threads: int | None = None) -> OrtEngine:
    """OrtEngine for graph "frame_detector" or "vita_head" of an export (plugin nodes run on the CPU)."""
    manifest = load_manifest(export_dir)
    path = Path(export_dir) / manifest["graphs"][graph]["file"]
    if manifest["plugins"]:
        from vita_deploy.export.plugin import ort_session_options_with_plugin
        options, path = ort_session_options_with_plugin(str(path))
        return OrtEngine(path, device, threads, session_options=options)
    return OrtEngine(path, device, threads)


def ort_graphs(export_dir: str | Path, device: torch.device | str = "cpu", threads: int | None = None
               ) -> tuple[DetectorFn, VitaFn]:
    """(DetectorFn, VitaFn) running the export's two ONNX graphs in ONNX Runtime."""
    return graphs_from_engines(ort_engine(export_dir, "frame_detector", device, threads),
                               ort_engine(export_dir, "vita_head", device, threads))
