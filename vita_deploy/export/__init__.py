"""ONNX export of the two graphs (frame detector, VITA head) with a manifest for the engine builder and runtime.

onnx_export: the exporter and manifest; plugin: NVIDIA's deformable-attention plugin node; ort: the export in
ONNX Runtime as `run_video` callables; cli: export/to_onnx.py.
"""
from vita_deploy.export.onnx_export import ExportError, ExportOptions, export_model, load_manifest
from vita_deploy.export.ort import ort_engine, ort_graphs

__all__ = ["ExportError", "ExportOptions", "export_model", "load_manifest", "ort_engine", "ort_graphs"]
