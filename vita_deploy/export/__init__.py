"""ONNX export of the two graphs (frame detector, VITA head) with a manifest for the engine builder and runtime.

onnx_export: the exporter and manifest; plugin: NVIDIA's deformable-attention plugin node; cli: `vita-deploy export` (and export/to_onnx.py).
Running an export is a runtime backend: `vita_deploy.runtime.ort_export` (ONNX Runtime), `vita_deploy.runtime`
(TensorRT).
"""
from vita_deploy.export.onnx_export import ExportError, ExportOptions, export_model, load_manifest

__all__ = ["ExportError", "ExportOptions", "export_model", "load_manifest"]
