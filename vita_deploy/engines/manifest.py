"""Build every graph of an export with the shape profiles its manifest.json declares.

Manifest schema read here (written by vita_deploy/export/onnx_export.py; only these keys are used):

    {"format": "vita-deploy-export", "format_version": 1,
     "precision": "fp32" | "fp16", "deform_attn": "plugin" | "vita-plugin" | "native",
     "plugins": [op names, optional],
     "graphs": {"<graph>": {"file": "<name>.onnx" (relative to the manifest), "sha256": "<hex>" (optional),
                            "profiles": {"<input>": {"min": [...], "opt": [...], "max": [...]}},
                            "custom_ops": [{"op_type": ...}, ...] (optional), ...}}}

Plugin ops (top-level "plugins", any graph's "custom_ops", or deform_attn == "plugin") are refused up front on
TensorRT-RTX, which has no NVIDIA plugin library; datacenter TensorRT gets to try (the parser names a missing one).
Our own plugin (deform_attn == "vita-plugin") is registered before parsing where TensorRT has AOT Python plugins
(datacenter >= 10.9) and refused up front elsewhere, naming `--deform-attn native`.

Engines are written as `<out_dir>/<onnx stem>.engine` (+ `.engine.json`), out_dir defaulting to the export
folder, which is where the runtime looks for them.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from vita_deploy.engines.backend import Backend, load_backend
from vita_deploy.engines.builder import MSDA_PLUGIN, BuildOptions, build_engine
from vita_deploy.engines.errors import ManifestError, PluginMissingError
from vita_deploy.engines.vita_plugin import register as register_vita_plugin, supports_aot_plugins
from vita_deploy.export.plugin import VITA_PLUGIN
from vita_deploy.engines.shapes import ShapeRange
from vita_deploy.export.onnx_export import ExportError, load_manifest
from vita_deploy.files import file_sha256

log = logging.getLogger("vita_deploy.engines")


def _shape(value, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and d >= 0 for d in value):
        raise ManifestError(f"{where} must be a list of non-negative ints, got {value!r}: re-export")
    return tuple(value)


def read_manifest(manifest_path: str | Path) -> dict:
    """Load and check manifest.json; returns it with each graph's "profiles" parsed to ShapeRange objects
    under "shape_ranges" and its ONNX path resolved under "onnx_path"."""
    path = Path(manifest_path)
    if path.is_dir():
        path = path / "manifest.json"
    try:  # one reader of the export format: the exporter's
        manifest = load_manifest(path.parent, check_graphs=True, require_config=False)
    except ExportError as e:
        raise ManifestError(str(e)) from None
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise ManifestError(f"{path} declares no graphs: re-export")
    for name, info in graphs.items():
        if not isinstance(info, dict) or "file" not in info:
            raise ManifestError(f"{path}: graph {name!r} has no 'file': re-export")
        onnx_path = path.parent / info["file"]
        if not onnx_path.is_file():
            raise ManifestError(f"{onnx_path} (graph {name!r} of {path}) does not exist: re-export")
        if info.get("sha256") and file_sha256(onnx_path) != info["sha256"]:
            raise ManifestError(f"{onnx_path} changed since {path} was written (sha256 differs): re-export")
        ranges = {}
        for inp, r in (info.get("profiles") or {}).items():
            where = f"{path}: graphs.{name}.profiles.{inp}"
            if not isinstance(r, dict) or not {"min", "opt", "max"} <= set(r):
                raise ManifestError(f"{where} needs min, opt and max: re-export")
            ranges[inp] = ShapeRange(*(_shape(r[k], f"{where}.{k}") for k in ("min", "opt", "max")))
        info["shape_ranges"], info["onnx_path"] = ranges, onnx_path
    return manifest


def build_from_manifest(manifest_path: str | Path, out_dir: str | Path | None = None,
                        options: BuildOptions | None = None, backend: Backend | None = None) -> dict[str, dict]:
    """Build each graph of the export with its declared profiles; returns {graph: sidecar}.
    `options` supplies everything but the shapes (precision flag, pools, targets, plugins...)."""
    if options is not None and options.shapes:
        raise ManifestError("shapes come from the manifest: do not combine --manifest with --min/opt/maxShapes")
    manifest = read_manifest(manifest_path)
    backend = backend or load_backend()
    custom_ops = {op.get("op_type", "") for g in manifest["graphs"].values() for op in g.get("custom_ops") or []}
    plugin_ops = sorted(set(manifest.get("plugins") or []) | custom_ops
                        | ({MSDA_PLUGIN} if manifest.get("deform_attn") == "plugin" else set()))
    if VITA_PLUGIN.op_type in plugin_ops:  # our Triton plugin: registered here, built ahead of time into the engine
        supported, why = supports_aot_plugins(backend.trt)
        if not supported:
            raise PluginMissingError(
                f"{manifest_path} is a `--deform-attn vita-plugin` export (our Triton-kernel TensorRT plugin), which "
                f"needs datacenter TensorRT >= 10.9 with tensorrt.plugin: {why}. Re-export with `vita-deploy "
                "export --deform-attn native` to build with this TensorRT.", [], node_name="",
                op_type=VITA_PLUGIN.op_type)
        register_vita_plugin()
        plugin_ops.remove(VITA_PLUGIN.op_type)
    if plugin_ops and backend.is_rtx:
        raise PluginMissingError(
            f"{manifest_path} is a `--deform-attn {manifest.get('deform_attn')}` export whose graphs use "
            f"{', '.join(plugin_ops)}; TensorRT-RTX does not ship NVIDIA's plugin library, so it cannot build them: "
            "re-export with `vita-deploy export --deform-attn native` (or build with datacenter TensorRT).",
            [], node_name="", op_type=plugin_ops[0])
    base = options or BuildOptions()
    export_dir = Path(manifest_path) if Path(manifest_path).is_dir() else Path(manifest_path).parent
    out = Path(out_dir) if out_dir else export_dir
    results = {}
    for graph, info in manifest["graphs"].items():
        engine = out / (Path(info["file"]).stem + ".engine")
        log.info("graph %s: %s -> %s", graph, info["onnx_path"], engine)
        results[graph] = build_engine(
            info["onnx_path"], engine, dataclasses.replace(base, shapes=info["shape_ranges"]),
            metadata={"graph": graph, "export": {"manifest": str(Path(manifest_path)),
                                                 "precision": manifest.get("precision"),
                                                 "deform_attn": manifest.get("deform_attn")}},
            backend=backend)
    return results
