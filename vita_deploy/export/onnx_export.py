"""Export the frame detector and the VITA head to ONNX (torch.onnx, dynamo exporter) with a manifest.

Why the dynamo exporter (`torch.onnx.export(dynamo=True)`, i.e. torch.export with `Dim`s): the VITA head pads T to
a multiple of the window and builds its shifted-window masks from T inside the graph, and the pixel decoder
derives its level sizes, reference points and split sizes from H and W. torch.export keeps those sizes symbolic
and checks every guard against the declared ranges, so one graph serves every T in 1..max_frames and every
H, W (multiples of 32) exactly as the eager model does. The TorchScript tracer (still in torch 2.13 as
`dynamo=False`, deprecated) records Python ints at the example's values, so padding, window counts and level
sizes would be frozen silently. Custom ops translate through onnxscript (`custom_translation_table`), which is
how the plugin node is emitted.

Deformable attention is exported as NVIDIA's plugin node ("plugin"), as our own Triton-kernel plugin node
("vita-plugin", `vita_deploy/engines/vita_plugin.py`) or as standard operators with Gather-based bilinear sampling
("native"); see `vita_deploy.modeling.ms_deform_attn.deform_attn_implementation`.
fp16 graphs run the model in half precision with fp32 islands written into the model code itself (softmax and
attention biases, LayerNorm/GroupNorm statistics, deformable-attention sampling coordinates, attention weights
and accumulation), so the islands are Casts in the ONNX and strongly typed builders (TensorRT 11, TensorRT-RTX)
build the graph as is. Graph inputs and outputs stay float32 in both precisions (one Cast at each end), so the
runtime feeds and reads the same tensors whatever the precision; the manifest records every dtype.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import torch
from torch import nn
from torch.export import Dim

from vita_deploy.export.plugin import PLUGINS, TRANSLATIONS, annotate_plugin_outputs, plugins_in
from vita_deploy.config import ModelConfig, SwinConfig
from vita_deploy.files import atomic_write, file_sha256
from vita_deploy.modeling.model import MaskFeatureGraph, VitaModel
from vita_deploy.modeling.backbone import fold_frozen_batchnorm
from vita_deploy.modeling.ms_deform_attn import deform_attn_implementation
from vita_deploy.export.quantize import QUANT_PRECISIONS, QuantOptions
from vita_deploy.pipeline.preprocess import padded_size

EXPORT_FORMAT_VERSION = 1
EXPORTER_VERSION = "vita-deploy-export 1.0"
OPSET = 18
DETECTOR_FILE, VITA_FILE, MANIFEST_FILE = "frame_detector.onnx", "vita_head.onnx", "manifest.json"
MASK_FEATURES_FILE = "mask_features.onnx"  # the detector without its frame decoder (recompute mode)
GRAPHS = ("frame_detector", "vita_head", "mask_features")
DEFORM_ATTN_MODES = ("plugin", "vita-plugin", "native")
PRECISIONS = ("fp32", "fp16", *QUANT_PRECISIONS)
# Symbolic dims of the graph inputs/outputs, renamed from torch.export's names (s25, 8*s48, ...).
DETECTOR_DIMS = {"images": ["batch", None, "height", "width"], "frame_queries": ["batch", None, None],
                 "mask_features": ["batch", None, "height/4", "width/4"]}
VITA_DIMS = {"frame_queries": ["num_frames", None, None]}
MASK_FEATURES_DIMS = {"images": DETECTOR_DIMS["images"], "mask_features": DETECTOR_DIMS["mask_features"]}


class ExportError(ValueError):
    """Bad export arguments or a graph that fails the checks; the message says what to change."""


@dataclass(frozen=True)
class ExportOptions:
    deform_attn: str = "plugin"  # "plugin" | "vita-plugin" | "native"
    precision: str = "fp32"  # "fp32" | "fp16"
    max_frames: int = 360  # T range of the VITA head: 1..max_frames
    height: int | None = None  # fixed padded input size (multiples of 32), or None for dynamic
    width: int | None = None
    max_batch: int | None = None  # frames per detector call, 1..max_batch (default: the config's chunk size)
    # int8 / fp8 only (vita_deploy/export/quantize.py): calibration method and number of calibration frames,
    # and, when set, the per-block sensitivity sweep (one extra quantization + run per block) with the largest
    # cosine drop a block may cost alone and still be quantized
    calib_method: str = "max"
    calib_frames: int = 8
    sensitivity: float | None = None

    def __post_init__(self) -> None:
        if self.deform_attn not in DEFORM_ATTN_MODES:
            raise ExportError(f"--deform-attn must be one of {', '.join(DEFORM_ATTN_MODES)}, not {self.deform_attn!r}")
        if self.precision not in PRECISIONS:
            raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.precision in QUANT_PRECISIONS:
            QuantOptions(self.precision, self.calib_method, self.calib_frames)  # refuses fp8 + entropy etc.
            if self.sensitivity is not None and not 0 < self.sensitivity < 1:
                raise ExportError(f"--sensitivity MAX_DROP must be in (0, 1), not {self.sensitivity} (a cosine "
                                  "drop, e.g. 0.001)")
            if self.deform_attn != "native":
                raise ExportError(
                    f"--precision {self.precision} needs --deform-attn native: ModelOpt calibrates with ONNX "
                    "Runtime's CPU provider, and plugin nodes make it require the TensorRT provider; carrying the "
                    "Q/DQ placement over to plugin graphs is not implemented. Export with --deform-attn native "
                    "(builds on TensorRT-RTX and any TensorRT without a plugin library).")
        if (self.height is None) != (self.width is None):
            raise ExportError("give both --height and --width (fixed size) or neither (dynamic size)")
        for name, v in (("height", self.height), ("width", self.width)):
            if v is not None and (v < 64 or v % 32):
                raise ExportError(f"--{name} {v} must be a multiple of 32 and at least 64 (the padded input size)")
        if self.max_frames < 1:
            raise ExportError(f"--max-frames must be >= 1, not {self.max_frames}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ExportError(f"max_batch must be >= 1, not {self.max_batch}")


class _Precision(nn.Module):
    """Runs a copy of `module` in fp16 between float32 graph inputs and outputs (plain wrapper for fp32)."""

    def __init__(self, module: nn.Module, precision: str) -> None:
        super().__init__()
        self.half = precision == "fp16"
        self.module = copy.deepcopy(module).half() if self.half else module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        out = self.module(x.half() if self.half else x)
        return out.float() if isinstance(out, torch.Tensor) else tuple(o.float() for o in out)


def example_size(cfg: ModelConfig) -> tuple[int, int]:
    """Padded H, W of the example traced for a dynamic-size export. ResNet: 64x96. Swin: every stage map spans at
    least two windows per axis (res5 > window), because torch.export specialises sizes that are 1 in the
    example (a window count of 1 would be baked into the graph and fail at larger inputs)."""
    if isinstance(cfg.backbone, SwinConfig):
        return 32 * (cfg.backbone.window_size + 1), 32 * (cfg.backbone.window_size + 2)
    return 64, 96


def input_profiles(model: VitaModel, options: ExportOptions) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes of every graph input: what the manifest declares and the engine builder uses."""
    cfg = model.cfg
    chunk = options.max_batch or cfg.inference.chunk_size
    q, c = cfg.frame_decoder.num_queries, cfg.frame_decoder.hidden_dim
    if options.height is not None:
        hw_min = hw_opt = hw_max = [options.height, options.width]
    else:  # optimise for a 16:9 video after the shortest-edge resize; allow both orientations up to the long side
        hw_opt = list(padded_size(cfg.input.min_size_test, round(cfg.input.min_size_test * 16 / 9)))
        long_side = padded_size(cfg.input.max_size_test, cfg.input.max_size_test)[0]
        hw_min, hw_max = [64, 64], [long_side, long_side]
    return {
        "images": {"min": [1, 3, *hw_min], "opt": [chunk, 3, *hw_opt], "max": [chunk, 3, *hw_max]},
        "frame_queries": {"min": [1, q, c], "opt": [min(36, options.max_frames), q, c],
                          "max": [options.max_frames, q, c]},
    }


def _rename_dims(model: onnx.ModelProto, names: dict[str, list[str | None]]) -> None:
    """Give the I/O dims readable names and apply the same renaming to every value_info of the graph."""
    mapping: dict[str, str] = {}
    for v in list(model.graph.input) + list(model.graph.output):
        for dim, new in zip(v.type.tensor_type.shape.dim, names.get(v.name, [])):
            if new and dim.dim_param:
                mapping.setdefault(dim.dim_param, new)
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in v.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


def export_graph(module: nn.Module, example: torch.Tensor, dynamic: dict | None, input_name: str,
                 output_names: list[str], dim_names: dict, path: Path, options: ExportOptions) -> onnx.ModelProto:
    """One graph -> checked ONNX file (written atomically); returns the model."""
    # Quiet per-node notes ("Skipping constant folding ...") and "torchvision is not installed" registry warnings.
    for name in ("onnxscript", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with deform_attn_implementation(options.deform_attn), torch.no_grad():
        program = torch.onnx.export(
            _Precision(module, options.precision).eval(), (example,), dynamo=True, input_names=[input_name],
            output_names=output_names, dynamic_shapes={"x": dynamic} if dynamic else None, opset_version=OPSET,
            custom_translation_table={torch.ops.vita_deploy.ms_deform_attn_plugin.default:
                                      TRANSLATIONS.get(options.deform_attn, TRANSLATIONS["plugin"])},
            optimize=True, verbose=False)
    model = program.model_proto
    if options.deform_attn in PLUGINS:
        model = annotate_plugin_outputs(model)
    _rename_dims(model, dim_names)
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


def _dims(profiles: dict, model: onnx.ModelProto) -> dict[str, dict]:
    """{symbolic dim: {min, opt, max}} read off the input profiles (output dims follow from them)."""
    dims: dict[str, dict] = {}
    for v in model.graph.input:
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if d.dim_param:
                dims[d.dim_param] = {k: profiles[v.name][k][i] for k in ("min", "opt", "max")}
                if d.dim_param in ("height", "width"):
                    dims[d.dim_param]["multiple_of"] = 32
    return dims


def _custom_ops(model: onnx.ModelProto) -> list[dict]:
    """One entry per plugin op the graph uses: op type, domain, creator version, aot flag, node count."""
    ops = []
    for p in plugins_in(model):
        count = sum((n.op_type, n.domain) == (p.op_type, p.domain) for n in model.graph.node)
        extra = {"aot": p.attributes["aot"]} if "aot" in p.attributes else {}
        ops.append({"op_type": p.op_type, "domain": p.domain, "plugin_version": p.version, **extra, "count": count})
    return ops


def _image_example(profile: dict, options: ExportOptions, cfg) -> tuple[torch.Tensor, dict]:
    """Example images (N, 3, H, W) and their dynamic dims for the graphs that take `images` (detector, mask
    features): N in 1..max, H and W multiples of 32 within the profile unless the export has a fixed size."""
    example = torch.randn(min(2, profile["max"][0]), 3, *((options.height, options.width) if options.height
                                                          else example_size(cfg)))
    dynamic = {0: Dim("batch", min=1, max=profile["max"][0])} if profile["max"][0] > 1 else {}
    if options.height is None:
        dynamic[2] = 32 * Dim("h32", min=profile["min"][2] // 32, max=profile["max"][2] // 32)
        dynamic[3] = 32 * Dim("w32", min=profile["min"][3] // 32, max=profile["max"][3] // 32)
    return example, dynamic


def export_model(model: VitaModel, out_dir: str | Path, options: ExportOptions, checkpoint: str | Path | None = None,
                 log: Callable[[str], None] = print, graphs: tuple[str, ...] = GRAPHS,
                 calib: list[str | Path] | None = None) -> dict:
    """Write frame_detector.onnx, vita_head.onnx, mask_features.onnx and manifest.json into `out_dir`; returns
    the manifest.

    graphs: export only some of the three graphs (tests); the manifest then lists only those.
    calib: int8 / fp8 only: calibration videos (mp4 files, frame folders, YouTube-VIS folders); None: the
    synthetic generator (tiny only). See vita_deploy/export/quantize.py.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the output folder {out_dir}: {e.strerror}; choose another --out-dir") from None
    if not os.access(out_dir, os.W_OK):
        raise ExportError(f"the output folder {out_dir} is not writable; choose another --out-dir")
    unknown = set(graphs) - set(GRAPHS)
    if unknown:
        raise ExportError(f"unknown graphs {sorted(unknown)}; choose from {GRAPHS}")
    # FrozenBN folded into the convolutions: plain Conv nodes (what INT8 quantizers and runtimes fuse best)
    model = fold_frozen_batchnorm(model.eval().float())
    cfg = model.cfg
    profiles = input_profiles(model, options)
    if options.precision in QUANT_PRECISIONS:  # read the calibration frames first: bad --calib fails fast
        from vita_deploy.export.quantize import sample_frames
        calib_frames = sample_frames(calib, cfg, options.calib_frames)
    entries = {}
    if "frame_detector" in graphs:
        # images (N, 3, H, W) -> frame_queries (N, fQ, C), mask_features (N, C, H/4, W/4)
        p = profiles["images"]
        example, dynamic = _image_example(p, options, cfg)
        log(f"[1/3] exporting {DETECTOR_FILE} ({cfg.name}, deform-attn {options.deform_attn}, {options.precision}, "
            f"images min {p['min']} max {p['max']}) ...")
        start = time.perf_counter()
        onnx_model = export_graph(model.frame_detector, example, dynamic or None, "images",
                                  ["frame_queries", "mask_features"], DETECTOR_DIMS, out_dir / DETECTOR_FILE, options)
        seconds = time.perf_counter() - start
        entries["frame_detector"] = _entry(onnx_model, out_dir / DETECTOR_FILE, {"images": p}, seconds)
        log(f"      wrote {out_dir / DETECTOR_FILE} ({entries['frame_detector']['size_bytes'] / 2**20:.1f} MiB, "
            f"{seconds:.1f} s)")
    if "vita_head" in graphs:
        # frame_queries (T, fQ, C) -> class_logits (cQ, K+1), mask_embed (cQ, C)
        p = profiles["frame_queries"]
        example = torch.randn(min(7, options.max_frames), *p["min"][1:])
        dynamic = {0: Dim("num_frames", min=1, max=options.max_frames)} if options.max_frames > 1 else None
        log(f"[2/3] exporting {VITA_FILE} (T in 1..{options.max_frames}) ...")
        start = time.perf_counter()
        onnx_model = export_graph(model.vita_head, example, dynamic, "frame_queries", ["class_logits", "mask_embed"],
                                  VITA_DIMS, out_dir / VITA_FILE, options)
        seconds = time.perf_counter() - start
        entries["vita_head"] = _entry(onnx_model, out_dir / VITA_FILE, {"frame_queries": p}, seconds)
        log(f"      wrote {out_dir / VITA_FILE} ({entries['vita_head']['size_bytes'] / 2**20:.1f} MiB, {seconds:.1f} s)")

    if "mask_features" in graphs:
        # images (N, 3, H, W) -> mask_features (N, C, H/4, W/4): the same modules as the detector, no decoder
        p = profiles["images"]
        example, dynamic = _image_example(p, options, cfg)
        log(f"[+] exporting {MASK_FEATURES_FILE} (backbone, pixel decoder, mask-features conv) ...")
        start = time.perf_counter()
        onnx_model = export_graph(MaskFeatureGraph(model.frame_detector), example, dynamic or None, "images",
                                  ["mask_features"], MASK_FEATURES_DIMS, out_dir / MASK_FEATURES_FILE, options)
        seconds = time.perf_counter() - start
        entries["mask_features"] = _entry(onnx_model, out_dir / MASK_FEATURES_FILE, {"images": p}, seconds)
        log(f"      wrote {out_dir / MASK_FEATURES_FILE} ({entries['mask_features']['size_bytes'] / 2**20:.1f} MiB, "
            f"{seconds:.1f} s)")

    quantization = None
    if options.precision in QUANT_PRECISIONS:
        from vita_deploy.export.quantize import quantize_export

        opt = profiles["images"]["opt"]
        quantization = quantize_export(
            out_dir, {g: e["file"] for g, e in entries.items()}, cfg,
            QuantOptions(options.precision, options.calib_method, options.calib_frames), (opt[2], opt[3]),
            *calib_frames, options.sensitivity, log)
        for g, e in entries.items():  # the graphs changed: new hashes and sizes
            e.update(sha256=file_sha256(out_dir / e["file"]), size_bytes=(out_dir / e["file"]).stat().st_size)
            if g in quantization["cpu_int8"]:  # ONNX Runtime CPU's INT8 twin of this graph (U8S8)
                e["cpu_int8"] = quantization["cpu_int8"][g]

    import onnxscript
    manifest = {
        "format": "vita-deploy-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "exporter": {"version": EXPORTER_VERSION, "method": "torch.onnx.export(dynamo=True)",
                     "torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
                     "opset": OPSET},
        "opset": OPSET,
        "deform_attn": options.deform_attn,
        "precision": options.precision,
        "io_dtype": "float32",  # graph inputs/outputs are float32 in both precisions
        "plugins": [PLUGINS[options.deform_attn].op_type] if options.deform_attn in PLUGINS else [],
        "custom_opsets": {PLUGINS[options.deform_attn].domain: 1} if options.deform_attn in PLUGINS else {},
        "config": cfg.to_dict(),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
        "graphs": entries,
        **({"quantization": quantization} if quantization else {}),
    }
    atomic_write(out_dir / MANIFEST_FILE, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    log(f"[3/3] wrote {out_dir / MANIFEST_FILE}")
    return manifest


def _entry(model: onnx.ModelProto, path: Path, profiles: dict, seconds: float) -> dict:
    return {"file": path.name, "sha256": file_sha256(path), "size_bytes": path.stat().st_size, **_io(model),
            "dims": _dims(profiles, model), "profiles": profiles, "custom_ops": _custom_ops(model),
            "export_s": round(seconds, 2)}


def load_manifest(export_dir: str | Path, check_graphs: bool = False, require_config: bool = True) -> dict:
    """Read and check an export's manifest.json (clear errors when missing or from another format version).

    check_graphs: also parse every ONNX file it names and refuse a manifest whose declared precision or I/O
    (names, dtypes) disagrees with the graphs themselves (`check_manifest_graphs`). require_config: the model
    config must be there (the runtime builds the model's pre/post-processing from it; the engine builder does not)."""
    if not Path(export_dir).is_dir():
        raise ExportError(f"{export_dir} is not an export folder (it holds manifest.json and the ONNX files): pass "
                          "the --out-dir of `vita-deploy export`")
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(f"{path} does not exist: export first with `vita-deploy export --out-dir "
                          f"{Path(export_dir)}`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e}); re-export") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "vita-deploy-export" \
            or manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ExportError(f"{path} is not a vita-deploy export manifest of format version {EXPORT_FORMAT_VERSION}; "
                          "re-export with this version")
    for key, ok in (("precision", lambda v: v in PRECISIONS), ("deform_attn", lambda v: v in DEFORM_ATTN_MODES),
                    ("config", lambda v: isinstance(v, dict) or (v is None and not require_config)),
                    ("graphs", lambda v: isinstance(v, dict) and v)):
        if not ok(manifest.get(key)):
            raise ExportError(f"{path}: '{key}' is missing or invalid ({manifest.get(key)!r:.60}): re-export")
    for name, info in manifest["graphs"].items():
        if not isinstance(info, dict) or not isinstance(info.get("file"), str):
            raise ExportError(f"{path}: graph {name!r} has no 'file': re-export")
    if check_graphs:
        check_manifest_graphs(export_dir, manifest)
    return manifest


def check_manifest_graphs(export_dir: str | Path, manifest: dict) -> None:
    """Parse each ONNX file of the manifest; raise ExportError (naming the file) when one is missing, changed
    (sha256), unreadable, or when its inputs/outputs or precision are not what the manifest declares."""
    where = Path(export_dir) / MANIFEST_FILE
    for name, info in manifest["graphs"].items():
        for f in [info] + ([info["cpu_int8"]] if isinstance(info.get("cpu_int8"), dict) else []):
            path = Path(export_dir) / f["file"]
            if not path.is_file():
                raise ExportError(f"{path} (graph {name!r} of {where}) does not exist: re-export")
            if f.get("sha256") and file_sha256(path) != f["sha256"]:
                raise ExportError(f"{path} changed since {where} was written (sha256 differs; truncated or "
                                  "replaced?): re-export")
        path = Path(export_dir) / info["file"]
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
            raise ExportError(f"{path} is not a readable ONNX file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'parse error'}): the file is truncated or "
                              "corrupt; re-export") from None
        actual = _io(model)
        for kind in ("inputs", "outputs"):
            declared = [(t.get("name"), t.get("dtype")) for t in info.get(kind) or [] if isinstance(t, dict)]
            found = [(t["name"], t["dtype"]) for t in actual[kind]]
            if info.get(kind) is not None and declared != found:
                raise ExportError(f"{where}: graph {name!r} declares {kind} {declared} but {path.name} has {found}: "
                                  "the manifest was edited or belongs to another export; re-export")
        fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        quantized = (manifest.get("quantization") or {}).get("quantized_nodes", {}).get(name, 0) > 0
        if quantized and not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
            raise ExportError(f"{where} declares {name!r} quantized ({manifest['precision']}) but {path.name} has no "
                              "Q/DQ nodes: the manifest was edited or belongs to another export; re-export")
        if fp16 != (manifest["precision"] == "fp16"):
            raise ExportError(f"{where} declares precision {manifest['precision']} but {path.name} holds "
                              f"{'float16' if fp16 else 'only float32'} weights: the manifest was edited or "
                              "belongs to another export; re-export")
