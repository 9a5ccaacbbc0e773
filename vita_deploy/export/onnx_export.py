"""Export the frame detector and the VITA head to ONNX (torch.onnx, dynamo exporter).

Why the dynamo exporter (torch.export): the VITA head pads T to a multiple of the window and builds its masks
from T inside the graph, and the pixel decoder derives its level sizes from H and W. torch.export keeps those
sizes symbolic, so one graph serves every T in 1..max_frames and every H, W (multiples of 32) exactly as the
eager model does; the TorchScript tracer would freeze them to the example's values.

Deformable attention is exported as NVIDIA's plugin node ("plugin") or as standard operators with Gather-based
bilinear sampling ("native"). fp16 graphs run the model in half precision with fp32 islands written into the
model code itself (softmax and attention biases, LayerNorm/GroupNorm statistics, deformable-attention sampling
coordinates and accumulation), so the islands appear as Casts and strongly typed builders build the graph as
is; graph inputs and outputs stay float32.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import torch
from torch import nn
from torch.export import Dim

from vita_deploy.modeling.checkpoint import atomic_write, file_sha256
from vita_deploy.modeling.model import VitaModel
from vita_deploy.modeling.ms_deform_attn import deform_attn_implementation
from vita_deploy.preprocess import padded_size
from vita_deploy.export.plugin import PLUGIN_OP, annotate_plugin_outputs, plugin_translation

EXPORT_FORMAT_VERSION = 1
DETECTOR_FILE, VITA_FILE, MANIFEST_FILE = "frame_detector.onnx", "vita_head.onnx", "manifest.json"


class ExportError(ValueError):
    """Bad export arguments or a graph that fails the checks; the message says what to change."""


@dataclass(frozen=True)
class ExportOptions:
    deform_attn: str = "plugin"  # "plugin" | "native"
    precision: str = "fp32"  # "fp32" | "fp16"
    max_frames: int = 360  # T range of the VITA head: 1..max_frames
    height: int | None = None  # fixed padded input size (multiples of 32), or None for dynamic
    width: int | None = None

    def __post_init__(self) -> None:
        if self.deform_attn not in ("plugin", "native"):
            raise ExportError(f"--deform-attn must be plugin or native, not {self.deform_attn!r}")
        if self.precision not in ("fp32", "fp16"):
            raise ExportError(f"--precision must be fp32 or fp16, not {self.precision!r}")
        if (self.height is None) != (self.width is None):
            raise ExportError("give both --height and --width (fixed size) or neither (dynamic size)")
        for name, v in (("height", self.height), ("width", self.width)):
            if v is not None and (v <= 0 or v % 32):
                raise ExportError(f"--{name} {v} must be a positive multiple of 32 (the padded input size)")
        if self.max_frames < 1:
            raise ExportError("--max-frames must be >= 1")


class _Precision(nn.Module):
    """Runs `module` in fp16 between float32 graph inputs and outputs (identity wrapper for fp32)."""

    def __init__(self, module: nn.Module, precision: str) -> None:
        super().__init__()
        self.module = module.half() if precision == "fp16" else module
        self.half = precision == "fp16"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.module(x.half() if self.half else x)
        return a.float(), b.float()


def input_profiles(model: VitaModel, options: ExportOptions) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes of every graph input: what the manifest declares and the engine builder uses."""
    cfg = model.cfg
    chunk, q, c = cfg.inference.chunk_size, cfg.frame_decoder.num_queries, cfg.frame_decoder.hidden_dim
    # A typical 16:9 video after the shortest-edge resize, padded to 32: the optimisation point.
    opt_h, opt_w = padded_size(cfg.input.min_size_test, round(cfg.input.min_size_test * 16 / 9))
    if options.height is not None:
        hw_min = hw_opt = hw_max = [options.height, options.width]
    else:
        long_side = padded_size(cfg.input.max_size_test, cfg.input.max_size_test)[0]
        hw_min, hw_opt, hw_max = [64, 64], [opt_h, opt_w], [long_side, long_side]
    return {
        "images": {"min": [1, 3, *hw_min], "opt": [chunk, 3, *hw_opt], "max": [chunk, 3, *hw_max]},
        "frame_queries": {"min": [1, q, c], "opt": [min(36, options.max_frames), q, c],
                          "max": [options.max_frames, q, c]},
    }


def _export(module: nn.Module, example: torch.Tensor, dynamic: dict, input_name: str, output_names: list[str],
            path: Path, options: ExportOptions) -> onnx.ModelProto:
    with deform_attn_implementation(options.deform_attn), torch.no_grad():
        program = torch.onnx.export(
            _Precision(module, options.precision).eval(), (example,), dynamo=True, input_names=[input_name],
            output_names=output_names, dynamic_shapes={"x": dynamic} if dynamic else None, verbose=False,
            custom_translation_table={torch.ops.vita_deploy.ms_deform_attn_plugin.default: plugin_translation},
            optimize=True)
    model = program.model_proto
    if options.deform_attn == "plugin":
        model = annotate_plugin_outputs(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported {path.name} fails onnx.checker: {e}") from None
    atomic_write(path, lambda tmp: onnx.save(model, tmp))
    return model


def _io(model: onnx.ModelProto) -> dict[str, list[dict]]:
    def spec(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]}
    return {"inputs": [spec(v) for v in model.graph.input], "outputs": [spec(v) for v in model.graph.output]}


def export_model(model: VitaModel, out_dir: str | Path, options: ExportOptions, checkpoint: str | Path | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Write frame_detector.onnx, vita_head.onnx and manifest.json into `out_dir`; returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    cfg = model.cfg
    profiles = input_profiles(model, options)
    q, c = cfg.frame_decoder.num_queries, cfg.frame_decoder.hidden_dim

    # Frame detector: images (N, 3, H, W) -> frame_queries (N, fQ, C), mask_features (N, C, H/4, W/4).
    h, w = (options.height, options.width) if options.height else (64, 96)
    example = torch.randn(2, 3, h, w)
    dynamic = {0: Dim("N", min=1, max=cfg.inference.chunk_size)}
    if options.height is None:
        p = profiles["images"]
        dynamic[2] = 32 * Dim("H_32", min=p["min"][2] // 32, max=p["max"][2] // 32)
        dynamic[3] = 32 * Dim("W_32", min=p["min"][3] // 32, max=p["max"][3] // 32)
    start = time.perf_counter()
    log(f"exporting {DETECTOR_FILE} ({cfg.name}, {options.deform_attn}, {options.precision}) ...")
    detector = _export(model.frame_detector, example, dynamic, "images", ["frame_queries", "mask_features"],
                       out_dir / DETECTOR_FILE, options)
    detector_s = time.perf_counter() - start

    # VITA head: frame_queries (T, fQ, C) -> class_logits (cQ, K+1), mask_embed (cQ, C).
    start = time.perf_counter()
    log(f"exporting {VITA_FILE} (T in 1..{options.max_frames}) ...")
    example = torch.randn(min(7, options.max_frames), q, c)
    dynamic = {0: Dim("T", min=1, max=options.max_frames)} if options.max_frames > 1 else None
    vita = _export(model.vita_head, example, dynamic, "frame_queries", ["class_logits", "mask_embed"],
                   out_dir / VITA_FILE, options)
    vita_s = time.perf_counter() - start

    import onnxscript
    manifest = {
        "format": "vita-deploy-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "exporter": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
                     "opset": next(o.version for o in detector.opset_import if o.domain in ("", "ai.onnx"))},
        "deform_attn": options.deform_attn,
        "precision": options.precision,
        "plugins": [PLUGIN_OP] if options.deform_attn == "plugin" else [],
        "config": cfg.to_dict(),
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
        "graphs": {
            "frame_detector": {"file": DETECTOR_FILE, "sha256": file_sha256(out_dir / DETECTOR_FILE), **_io(detector),
                               "profiles": {"images": profiles["images"]}, "export_s": round(detector_s, 2)},
            "vita_head": {"file": VITA_FILE, "sha256": file_sha256(out_dir / VITA_FILE), **_io(vita),
                          "profiles": {"frame_queries": profiles["frame_queries"]}, "export_s": round(vita_s, 2)},
        },
    }
    atomic_write(out_dir / MANIFEST_FILE, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    log(f"wrote {out_dir / DETECTOR_FILE} ({detector_s:.1f} s), {out_dir / VITA_FILE} ({vita_s:.1f} s), "
        f"{out_dir / MANIFEST_FILE}")
    return manifest


def load_manifest(export_dir: str | Path) -> dict:
    """Read and check an export's manifest.json (clear errors when missing or from another format version)."""
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(f"{path} does not exist: export first with `python export/to_onnx.py --out-dir "
                          f"{Path(export_dir)}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON ({e}); re-export") from None
    if manifest.get("format") != "vita-deploy-export" or manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ExportError(f"{path} is not a vita-deploy export manifest of format version {EXPORT_FORMAT_VERSION}; "
                          "re-export with this version")
    return manifest
