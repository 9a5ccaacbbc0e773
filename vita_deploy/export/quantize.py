"""Post-training quantization of exported graphs to INT8 / FP8 Q/DQ ONNX with NVIDIA ModelOpt's ONNX quantizer.

Why ModelOpt (`modelopt.onnx.quantization.quantize`): it writes the symmetric Q/DQ graphs that strongly typed
TensorRT and TensorRT-RTX build as explicitly quantized networks, and it calibrates with ONNX Runtime's CPU
provider on a machine without a GPU (`calibration_eps=["cpu"]`). Only the portable `native` graph can be
calibrated that way (plugin nodes make ModelOpt insist on the TensorRT provider).

Placement (`placement`): not blanket quantization. Published 8-bit DETR-style deployments quantize the CNN
backbone and encoder convolutions and keep the decoder, attention (softmax, masks), LayerNorm, deformable-attention
sampling offsets / attention weights and the heads in higher precision. Here a node is quantized when it is a
Conv (backbone, pixel decoder input projections / FPN, mask-feature convs) or a MatMul/Gemm of the pixel decoder's
encoder that is *not* a sampling-offset or attention-weight projection; everything else (the frame decoder, every
head, LayerNorm, Softmax, the whole VITA graph) stays fp32. Modules are read off the exporter's per-node
`pkg.torch.onnx.name_scopes` metadata, so the rule names modules, not generated node names. With `--sensitivity`,
each block (backbone stage, pixel-decoder part) is first quantized alone and the blocks that cost more than the
given cosine drop stay fp32 (`sensitivity`, `sensitive_blocks`).

Two INT8 formats from one calibration: ModelOpt's symmetric S8S8 Q/DQ graph, which TensorRT builds, replaces the
fp32 graph; a CPU twin (`<graph>.cpu_int8.onnx`, `ort_cpu_variant`) in the format ONNX Runtime's CPU provider fuses
into 8-bit kernels (U8S8 with quantized outputs) is written next to it and run by ONNX Runtime on the CPU.

Calibration data: frames sampled evenly across user videos (mp4 files, frame folders, YouTube-VIS folders) or, for
`tiny`, across videos of the synthetic generator; pre-processed exactly as the runtime does (shortest-edge resize,
normalise, pad) and placed on the graph's opt-profile canvas (H, W). Saved as `calibration.npz` in the export
folder, its sha256 in the manifest.
"""
from __future__ import annotations

import ast
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import numpy as np
import onnx

from vita_deploy.config import ModelConfig
from vita_deploy.errors import InputError
from vita_deploy.files import atomic_write, atomic_write_text

QUANT_PRECISIONS = ("int8", "fp8")
CALIB_METHODS = {"int8": ("max", "entropy"), "fp8": ("max",)}
CALIB_FILE, PLACEMENT_JSON, PLACEMENT_MD = "calibration.npz", "quant_placement.json", "quant_placement.md"
CPU_INT8_SUFFIX = ".cpu_int8.onnx"  # frame_detector.onnx -> frame_detector.cpu_int8.onnx
CPU_INT8_FILES = ("frame_detector" + CPU_INT8_SUFFIX, "mask_features" + CPU_INT8_SUFFIX)
CPU_INT8_FORMAT = ("U8S8 Q/DQ: uint8 activations (min-max), int8 per-channel weights; onnxruntime.quantization "
                   "quantize_static, same frames and placement")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Modules (name-scope prefixes) whose Conv / MatMul / Gemm nodes are quantized ...
QUANTIZED_SCOPES = ("backbone", "pixel_decoder", "vita_mask_features")
# ... except these (kept fp32: deformable-attention sampling offsets and attention weights decide *where* to
# sample and how to mix; an 8-bit error there moves sampling points, not just values).
KEPT_SCOPES = ("sampling_offsets", "attention_weights")


class QuantizeError(InputError):
    """Bad quantization arguments or calibration data; the message names the problem and the fix."""


@dataclass(frozen=True)
class QuantOptions:
    precision: str  # "int8" | "fp8"
    calib_method: str = "max"  # int8: max | entropy; fp8: max only
    calib_frames: int = 8  # frames sampled across the calibration videos

    def __post_init__(self) -> None:
        if self.precision not in QUANT_PRECISIONS:
            raise QuantizeError(f"quantized precision must be one of {QUANT_PRECISIONS}, not {self.precision!r}")
        if self.calib_method not in CALIB_METHODS[self.precision]:
            raise QuantizeError(
                f"--calib-method {self.calib_method} is not available for --precision {self.precision}", None,
                f"use --calib-method {' or '.join(CALIB_METHODS[self.precision])} (ModelOpt calibrates FP8 with "
                "max only)")
        if self.calib_frames < 1:
            raise QuantizeError(f"--calib-frames must be >= 1, not {self.calib_frames}")


# ---------------------------------------------------------------------------------------------- calibration data
def _video_sources(path: Path) -> list[Path]:
    """One calibration path -> the videos in it: an mp4 file, a frame folder, a YouTube-VIS folder
    (`*/JPEGImages/<video>/`), or a folder of mp4s / frame folders."""
    from vita_deploy.pipeline.video_io import IMAGE_SUFFIXES

    if not path.exists():
        raise QuantizeError("--calib path does not exist", path, "pass mp4 files, frame folders or a YouTube-VIS "
                            "folder")
    if path.is_file():
        return [path]
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file()):
        return [path]
    jpeg_roots = sorted(path.glob("*/JPEGImages")) + ([path / "JPEGImages"] if (path / "JPEGImages").is_dir() else [])
    if jpeg_roots:
        return sorted(d for root in jpeg_roots for d in root.iterdir() if d.is_dir())
    return sorted(p for p in path.iterdir() if p.is_dir() or p.suffix.lower() in (".mp4", ".avi", ".mov", ".mkv"))


def _frames_from(video: Path, indices: list[int]) -> list[np.ndarray]:
    from vita_deploy.pipeline.video_io import open_video

    wanted, out = set(indices), []
    for i, frame in enumerate(open_video(video)):
        if i in wanted:
            out.append(frame)
        if len(out) == len(wanted):
            break
    return out


def sample_frames(calib: list[str | Path] | None, cfg: ModelConfig, num_frames: int, seed: int = 0
                  ) -> tuple[list[np.ndarray], str]:
    """uint8 (H, W, 3) RGB frames sampled evenly across the calibration videos (or, without `calib`, across
    synthetic videos for `tiny`); returns (frames, description of the source)."""
    if not calib:
        if cfg.name != "tiny":
            raise QuantizeError(f"missing calibration data for --config {cfg.name}", None,
                                "pass --calib VIDEOS (mp4 files, frame folders or a YouTube-VIS folder) with frames "
                                "like the ones the model will see; only tiny has a default (the synthetic generator)")
        from vita_deploy.data.synthetic import make_video

        rng = np.random.default_rng(seed)
        frames: list[np.ndarray] = []
        per_video = 3
        while len(frames) < num_frames:
            v = make_video(rng, min_frames=6, max_frames=12)
            frames += [v.frames[i] for i in np.linspace(0, len(v.frames) - 1, per_video).round().astype(int)]
        return frames[:num_frames], f"synthetic generator (seed {seed})"
    from vita_deploy.pipeline.video_io import VideoReadError, open_video

    videos = [v for c in calib for v in _video_sources(Path(c))]
    if not videos:
        raise QuantizeError("--calib holds no videos or frames", ", ".join(map(str, calib)),
                            "pass mp4 files, folders of frames (.jpg/.png) or a YouTube-VIS folder")
    lengths = []
    for v in videos:
        try:
            lengths.append(open_video(v).num_frames)
        except VideoReadError as e:
            raise QuantizeError(f"--calib video cannot be read: {e}", v, "pass readable videos or frame folders")
    # N frames spread over the videos in proportion to their length, evenly within each video
    total = sum(lengths)
    picks = np.linspace(0, total - 1, min(num_frames, total)).round().astype(int)
    starts = np.cumsum([0, *lengths])
    frames = []
    for k, v in enumerate(videos):
        idx = [int(p - starts[k]) for p in picks if starts[k] <= p < starts[k + 1]]
        if idx:
            frames += _frames_from(v, idx)
    return frames, f"{len(videos)} videos from {', '.join(map(str, calib))}"


def calibration_images(frames: list[np.ndarray], cfg: ModelConfig, size: tuple[int, int]) -> np.ndarray:
    """Frames -> float32 (N, 3, H, W): the runtime's pre-processing (shortest-edge resize, normalise, pad to 32),
    then placed top-left on an (H, W) zero canvas (cropped if larger), H, W the graph's opt-profile size."""
    from vita_deploy.pipeline.preprocess import frames_to_tensor, normalize_and_pad, resize_frame, shortest_edge_size

    h, w = size
    out = np.zeros((len(frames), 3, h, w), np.float32)
    for i, f in enumerate(frames):
        rs = resize_frame(f, shortest_edge_size(f.shape[0], f.shape[1], cfg.input.min_size_test,
                                                cfg.input.max_size_test))
        x = normalize_and_pad(frames_to_tensor([rs]), cfg.input)[0].numpy()
        out[i, :, : min(h, x.shape[1]), : min(w, x.shape[2])] = x[:, :h, :w]
    return out


# ------------------------------------------------------------------------------------------------------ placement
def node_scope(node: onnx.NodeProto) -> str:
    """The dotted module path a node was exported from ('' when the exporter recorded none). torch.onnx records
    `pkg.torch.onnx.name_scopes` as the list of nested module paths from the root, ending with the fx node's
    name: ['', 'module', 'module.backbone', ..., 'module.backbone.stem.conv1', 'conv2d']."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return ""
            return str(scopes[-2]) if isinstance(scopes, list) and len(scopes) >= 2 else ""
    return ""


def _strip_root(scope: str) -> str:
    """Drop the export wrappers ('module', '_Precision') so a scope starts at the detector's own modules."""
    parts = scope.split(".")
    while parts and parts[0] in ("", "module"):
        parts = parts[1:]
    return ".".join(parts)


def block_of(scope: str) -> str:
    """Sensitivity block of a module path: backbone stage (backbone.res2 ...), pixel_decoder.<part>, or the
    top-level module."""
    parts = _strip_root(scope).split(".")
    if parts[0] in ("backbone", "pixel_decoder") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def placement(model: onnx.ModelProto, blocks: set[str] | None = None, kept_blocks: Collection[str] = ()
              ) -> dict[str, list[str]]:
    """{"quantize": [node names], "exclude": [node names]} over the graph's Conv / MatMul / Gemm nodes.

    A node is quantized when its module lies under QUANTIZED_SCOPES and not under KEPT_SCOPES, and its block is
    not in `kept_blocks` (blocks the sensitivity sweep found too sensitive); when `blocks` is given, only nodes of
    those blocks (the sweep quantizes one block at a time)."""
    chosen, excluded = [], []
    for n in model.graph.node:
        if n.op_type not in QUANTIZED_OPS:
            continue
        scope = _strip_root(node_scope(n))
        parts = scope.split(".")
        ok = bool(parts) and parts[0] in QUANTIZED_SCOPES and not any(k in parts for k in KEPT_SCOPES)
        ok = ok and block_of(scope) not in kept_blocks and (blocks is None or block_of(scope) in blocks)
        (chosen if ok else excluded).append(n.name)
    return {"quantize": chosen, "exclude": excluded}


def sensitive_blocks(table: dict[str, dict], max_drop: float) -> list[str]:
    """Blocks to keep in fp32: those whose quantization alone lowers the frame-query or the mask-feature cosine
    to fp32 by more than `max_drop` (1 - cosine, mean over rows)."""
    return sorted(b for b, s in table.items()
                  if 1 - s["frame_queries_cosine"] > max_drop or 1 - s["mask_features_cosine"] > max_drop)


# ---------------------------------------------------------------------------------------------------- quantizing
class _NoNvmlNoise(logging.Filter):
    """Drops ModelOpt's "Failed to get GPU count: NVML Shared Library Not Found", logged as an ERROR on every
    calibration on a machine without NVIDIA's driver; CPU calibration does not need a GPU count."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to get GPU count" not in record.getMessage()


def _quiet_quantizers() -> None:
    """ModelOpt's loggers: warnings and errors only, without the NVML noise; ONNX Runtime's symbolic shape
    inference (which both quantizers run): errors only, since it warns "Unable to determine if <size expression> <=
    ..., treat as equal" for every dynamic level size of the pixel decoder, hundreds of lines, harmless (idempotent)."""
    for name in ("modelopt", "modelopt.onnx"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _NoNvmlNoise) for f in logger.filters):
            logger.addFilter(_NoNvmlNoise())
    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.ERROR)


def quantize_graph(src: Path, dst: Path, images: np.ndarray, options: QuantOptions, place: dict[str, list[str]],
                   log: Callable[[str], None] = print) -> onnx.ModelProto:
    """Quantize one `native` graph taking `images` with ModelOpt (CPU calibration) under the given placement;
    writes `dst` atomically and returns the Q/DQ model."""
    from modelopt.onnx.quantization import quantize

    _quiet_quantizers()
    if not place["quantize"]:
        raise QuantizeError(f"the placement quantizes no node of {src.name}", src, "re-export from a vita-deploy "
                            "export of this version (node scopes are read from the exporter's metadata)")
    tmp = Path(tempfile.mkdtemp(prefix="vita_quant_"))
    try:
        out = tmp / dst.name
        quantize(
            onnx_path=str(src), quantize_mode=options.precision, calibration_data={"images": images},
            calibration_method=options.calib_method, calibration_eps=["cpu"],
            calibration_shapes=f"images:1x{images.shape[1]}x{images.shape[2]}x{images.shape[3]}",
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=[f"^{re.escape(n)}$" for n in place["exclude"]],
            high_precision_dtype="fp32", output_path=str(out), log_level="WARNING")
        model = onnx.load(str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"      {dst.name}: {sum(n.op_type == 'QuantizeLinear' for n in model.graph.node)} Q / "
        f"{sum(n.op_type == 'DequantizeLinear' for n in model.graph.node)} DQ nodes, "
        f"{len(place['quantize'])} of {len(place['quantize']) + len(place['exclude'])} Conv/MatMul/Gemm quantized")
    atomic_write(dst, lambda t: onnx.save(model, t))
    return model


def save_calibration(path: Path, images: np.ndarray, frame_queries: np.ndarray | None = None) -> None:
    """calibration.npz: `images` (N, 3, H, W) float32 detector inputs, `frame_queries` (N, fQ, C) the fp32
    detector's output on them (the VITA graph's calibration data)."""
    arrays = {"images": images} | ({"frame_queries": frame_queries} if frame_queries is not None else {})

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    atomic_write(path, write)


def write_placement(out_dir: Path, record: dict) -> None:
    """quant_placement.json (the full record) and quant_placement.md (a readable summary + sensitivity table)."""
    atomic_write_text(out_dir / PLACEMENT_JSON, json.dumps(record, indent=2))
    lines = [f"# Quantization placement ({record['precision']}, {record['calib_method']} calibration)", "",
             f"Calibration: {record['calib_frames']} frames, {record['calib_source']}.", "",
             "Rule: Conv / MatMul / Gemm nodes under " + ", ".join(QUANTIZED_SCOPES) + " are quantized, except "
             + ", ".join(KEPT_SCOPES) + "; everything else (frame decoder, heads, LayerNorm, Softmax, the VITA "
             "graph) stays fp32."]
    kept = record.get("kept_fp32_blocks")
    if kept is not None:
        lines.append(f"Sensitivity: blocks whose quantization alone lowers the frame-query or mask-feature cosine "
                     f"by more than {record['sensitivity_max_drop']:g} stay fp32: {', '.join(kept) or 'none'}.")
    lines.append("")
    for graph, g in record["graphs"].items():
        lines.append(f"- {graph}: {len(g['quantize'])} nodes quantized, {len(g['exclude'])} kept fp32")
    if record.get("sensitivity"):
        lines += ["", "| block (quantized alone) | nodes | frame-query cosine | mask-feature cosine | "
                  "frame-query rel err | mask-feature rel err | placement |", "|---|---|---|---|---|---|---|"]
        for b, s in record["sensitivity"].items():
            lines.append(f"| {b} | {s['nodes']} | {s['frame_queries_cosine']:.6f} | {s['mask_features_cosine']:.6f} "
                         f"| {s['frame_queries_rel']:.2e} | {s['mask_features_rel']:.2e} | "
                         f"{'fp32 (sensitive)' if b in (kept or ()) else record['precision']} |")
    atomic_write_text(out_dir / PLACEMENT_MD, "\n".join(lines) + "\n")


def ort_session_options(precision: str, threads: int | None = None):
    """ONNX Runtime CPU session options for a quantized graph. FP8 Q/DQ graphs have no CPU kernels: ORT runs them as
    fake-quantized fp32 with its Q/DQ fusion off (`session.disable_quant_qdq`) *and* every graph optimisation off.
    Measured with ONNX Runtime 1.32 on the tiny fp8 detector: with only `disable_quant_qdq` the frame queries have
    cosine 0.82 to fp32 (an optimisation mishandles the FP8 weight Q/DQ); with all optimisations off, 0.99995."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if precision == "fp8":
        so.add_session_config_entry("session.disable_quant_qdq", "1")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    return so


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def _run(path: Path, images: np.ndarray, precision: str = "fp32") -> dict[str, np.ndarray]:
    """Outputs of a detector / mask-feature graph on `images`, one frame at a time (ONNX Runtime CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), ort_session_options(precision), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = [sess.run(names, {"images": images[i: i + 1]}) for i in range(len(images))]
    return {n: np.concatenate([o[k] for o in outs]) for k, n in enumerate(names)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows (last axis) of the cosine similarity."""
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)))


def _channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) mask features -> (N, H, W, C): one row per pixel for `_cosine`."""
    return np.moveaxis(x, 1, -1)


def sensitivity(src: Path, images: np.ndarray, options: QuantOptions, log: Callable[[str], None] = print
                ) -> dict[str, dict]:
    """Per-block sensitivity of the frame detector: quantize one block at a time (the placement restricted to it)
    and measure frame-query and mask-feature cosine (per query / per pixel) and relative error vs the fp32 graph."""
    model = onnx.load(str(src))
    ref = _run(src, images)
    blocks = sorted({block_of(_strip_root(node_scope(n))) for n in model.graph.node
                     if n.name in set(placement(model)["quantize"])})
    table = {}
    tmp = Path(tempfile.mkdtemp(prefix="vita_sens_"))
    try:
        for b in blocks:
            place = placement(model, {b})
            quantize_graph(src, tmp / "q.onnx", images, options, place, log=lambda m: None)
            out = _run(tmp / "q.onnx", images, options.precision)
            table[b] = {"nodes": len(place["quantize"]),
                        "frame_queries_rel": rel_err(out["frame_queries"], ref["frame_queries"]),
                        "frame_queries_cosine": _cosine(out["frame_queries"], ref["frame_queries"]),
                        "mask_features_rel": rel_err(out["mask_features"], ref["mask_features"]),
                        "mask_features_cosine": _cosine(_channels_last(out["mask_features"]),
                                                        _channels_last(ref["mask_features"]))}
            log(f"      sensitivity {b}: {table[b]['nodes']} nodes, frame-query cosine "
                f"{table[b]['frame_queries_cosine']:.5f} (rel {table[b]['frame_queries_rel']:.2e}), mask-feature "
                f"cosine {table[b]['mask_features_cosine']:.5f} (rel {table[b]['mask_features_rel']:.2e})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return table


def quantize_export(out_dir: Path, files: dict[str, str], cfg: ModelConfig, options: QuantOptions,
                    image_size: tuple[int, int], frames: list[np.ndarray], source: str,
                    sensitivity_max_drop: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Quantize the fp32 `native` graphs of an export in place: the frame detector and the mask-feature graph
    (same placement, same calibration frames); the VITA head stays fp32 (placement). Writes calibration.npz
    and quant_placement.{json,md}; returns the manifest's "quantization" record.

    files: {graph: file name in out_dir} of the exported fp32 graphs; frames, source: `sample_frames`.
    sensitivity_max_drop: when given, measure each block's sensitivity on the frame detector first and keep in fp32
    the blocks whose quantization alone costs more than this much cosine (`sensitive_blocks`)."""
    import modelopt

    from vita_deploy.files import file_sha256

    images = calibration_images(frames, cfg, image_size)
    log(f"[q] calibrating {options.precision} ({options.calib_method}) on {len(images)} frames of {source}, "
        f"{image_size[0]}x{image_size[1]}")
    record: dict = {"precision": options.precision, "calib_method": options.calib_method,
                    "calib_frames": len(images), "calib_source": source, "tool": f"nvidia-modelopt "
                    f"{modelopt.__version__} (modelopt.onnx.quantization, calibration_eps cpu)", "graphs": {}}
    if "frame_detector" in files:
        detector = out_dir / files["frame_detector"]
        fp32 = _run(detector, images)
        if sensitivity_max_drop is not None:
            record["sensitivity"] = sensitivity(detector, images, options, log)
            record["sensitivity_max_drop"] = sensitivity_max_drop
            record["kept_fp32_blocks"] = sensitive_blocks(record["sensitivity"], sensitivity_max_drop)
            if set(record["kept_fp32_blocks"]) == set(record["sensitivity"]):
                raise QuantizeError(
                    f"--sensitivity {sensitivity_max_drop:g} keeps every block in fp32: each costs more than that "
                    "alone (the table above)", out_dir, "raise MAX_DROP (the default is 0.001), or export --precision "
                    "fp32 / fp16")
            log(f"      kept in fp32 (alone, cosine drop > {sensitivity_max_drop:g}): "
                f"{', '.join(record['kept_fp32_blocks']) or 'none'}")
        # the VITA graph's calibration data: the frame queries the fp32 detector produces on the calibration frames
        save_calibration(out_dir / CALIB_FILE, images, fp32["frame_queries"])
    else:
        save_calibration(out_dir / CALIB_FILE, images)
    record["calibration"] = {"file": CALIB_FILE, "sha256": file_sha256(out_dir / CALIB_FILE)}
    cpu_int8 = {}
    for graph in ("frame_detector", "mask_features"):
        if graph in files:
            path = out_dir / files[graph]
            model = onnx.load(str(path))
            place = placement(model, kept_blocks=record.get("kept_fp32_blocks", ()))
            if options.precision == "int8":  # from the fp32 graph, before ModelOpt replaces it
                twin = path.with_name(path.name.removesuffix(".onnx") + CPU_INT8_SUFFIX)
                in_fresh_process(ort_cpu_variant, path, twin, images, place)
                cpu_int8[graph] = {"file": twin.name, "sha256": file_sha256(twin), "size_bytes": twin.stat().st_size,
                                   "format": CPU_INT8_FORMAT}
                log(f"      {twin.name}: the CPU provider's INT8 twin ({CPU_INT8_FORMAT.split(':')[0]})")
            quantize_graph(path, path, images, options, place, log)
            record["graphs"][graph] = place
    if "frame_detector" in files:
        def parity(q: dict[str, np.ndarray]) -> dict[str, float]:
            return {"frame_queries_cosine": _cosine(q["frame_queries"], fp32["frame_queries"]),
                    "frame_queries_rel": rel_err(q["frame_queries"], fp32["frame_queries"]),
                    "mask_features_rel": rel_err(q["mask_features"], fp32["mask_features"])}

        record["calibration_parity"] = parity(_run(out_dir / files["frame_detector"], images, options.precision))
        log(f"      detector on the calibration frames vs fp32: {record['calibration_parity']}")
        if "frame_detector" in cpu_int8:
            record["calibration_parity_cpu_int8"] = parity(_run(out_dir / cpu_int8["frame_detector"]["file"], images))
            log(f"      CPU twin on the calibration frames vs fp32: {record['calibration_parity_cpu_int8']}")
    if "vita_head" in files:
        record["graphs"]["vita_head"] = placement(onnx.load(str(out_dir / files["vita_head"])))  # all fp32
    write_placement(out_dir, record)
    record["placement"] = {"json": PLACEMENT_JSON, "md": PLACEMENT_MD}
    return {k: v for k, v in record.items() if k != "graphs"} | {
        "quantized_nodes": {g: len(p["quantize"]) for g, p in record["graphs"].items()}, "cpu_int8": cpu_int8}


def in_fresh_process(fn: Callable, *args):
    """fn(*args) in a spawned interpreter. Why: once ModelOpt has quantized in a process it has patched ONNX
    Runtime's calibrators for good (modelopt/onnx/quantization/ort_patching.py), and ONNX Runtime's own
    `quantize_static` then fails there ("Quantization parameters are not specified for param images")."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def ort_cpu_variant(src: Path, dst: Path, images: np.ndarray, place: dict[str, list[str]]) -> None:
    """The CPU provider's INT8 format of a graph: ONNX Runtime's static quantizer, Q/DQ with unsigned activations
    and signed per-channel weights (U8S8: the VNNI / AMX kernels' native pair), the same placement and calibration
    frames, min-max calibration. Written atomically to `dst`.

    Why a second graph: ONNX Runtime's CPU provider fuses DQ -> Conv -> Q into QLinearConv (and MatMul into
    QLinearMatMul) only when the operator's output is quantized too, and its x86 kernels want unsigned
    activations. ModelOpt's graph for TensorRT quantizes operator inputs only, symmetric int8 (S8S8), so ONNX
    Runtime runs it as fp32 convolutions between Q/DQ pairs: slower than fp32 (measured: tiny detector 0.91x).
    Must run in a process where ModelOpt has not quantized (`in_fresh_process`)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(images[i: i + 1] for i in range(len(images)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

    _quiet_quantizers()
    tmp = Path(tempfile.mkdtemp(prefix="vita_ortq_"))
    try:
        # ONNX shape inference only: ORT's symbolic shape inference fails on these graphs (1.32); names kept
        quant_pre_process(str(src), str(tmp / "pre.onnx"), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(str(tmp / "pre.onnx"), str(tmp / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_quantize=place["quantize"], calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(tmp / "q.onnx"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write(dst, lambda t: onnx.save(model, t))
