"""`vita-deploy export`: export VITA's graphs to ONNX (frame detector, VITA head, mask-feature graph).

    vita-deploy export --config tiny --out-dir exports/tiny_native --deform-attn native
    vita-deploy export --config r50 --checkpoint model_final.pth --out-dir exports/r50 --precision fp16

Writes frame_detector.onnx, vita_head.onnx, mask_features.onnx (recompute mode) and manifest.json (I/O names,
dtypes, symbolic dims with min/opt/max, opset, deformable-attention mode, precision, model config, checkpoint
sha256, exporter version).
`--deform-attn plugin` (default) emits NVIDIA's MultiscaleDeformableAttnPlugin_TRT (datacenter TensorRT >= 10.11,
NVIDIA's fused kernel); `vita-plugin` emits our own plugin node (the Triton kernel, embedded in the engine as PTX
by datacenter TensorRT >= 10.9); `native` uses standard operators only (ONNX Runtime, TensorRT-RTX, any
TensorRT, no plugin library). Without --checkpoint: the shipped tiny checkpoint for --config tiny, else random weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vita_deploy.commands import cli
from vita_deploy.config import canonical_config_name, config_names
from vita_deploy.export.onnx_export import (DEFORM_ATTN_MODES, DETECTOR_FILE, GRAPHS, MANIFEST_FILE,
                                            MASK_FEATURES_FILE, PRECISIONS, VITA_FILE, ExportOptions, export_model)
from vita_deploy.export.quantize import CALIB_FILE, CPU_INT8_FILES, PLACEMENT_JSON, PLACEMENT_MD
from vita_deploy.files import refuse_clobber


def build_parser(prog: str = "vita-deploy export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    p.add_argument("--config", choices=config_names(), type=canonical_config_name, default="tiny", help="model config")
    p.add_argument("--checkpoint", type=cli.existing_file,
                   help="our .pth or an official VITA model_final.pth (default: shipped tiny "
                                        "checkpoint for tiny, random weights otherwise)")
    # output
    p.add_argument("--out-dir", type=cli.output_dir, required=True, help="folder for the .onnx files and manifest.json")
    p.add_argument("--deform-attn", choices=DEFORM_ATTN_MODES, default="plugin",
                   help="plugin: NVIDIA's TensorRT plugin node; vita-plugin: our Triton-kernel TensorRT plugin node; "
                        "native: standard ONNX ops (Gather-based)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp16: half-precision graph with fp32 islands (for strongly typed builders); int8 / fp8: "
                        "post-training Q/DQ quantization with NVIDIA ModelOpt (needs --deform-attn native)")
    # quantization (int8 / fp8)
    p.add_argument("--calib", nargs="+", metavar="VIDEOS",
                   help="int8/fp8 calibration videos: mp4 files, frame folders or a YouTube-VIS folder (default for "
                        "tiny: the synthetic generator; other configs need it)")
    p.add_argument("--calib-frames", type=cli.positive_int, default=8,
                   help="frames sampled evenly across the calibration videos")
    p.add_argument("--calib-method", choices=["max", "entropy"], default="max",
                   help="int8: max or entropy; fp8: max only")
    p.add_argument("--sensitivity", nargs="?", type=float, const=1e-3, metavar="MAX_DROP",
                   help="int8/fp8: measure per-block sensitivity first (quantize one block at a time) and keep in "
                        "fp32 every block whose quantization alone lowers the frame-query or mask-feature cosine by "
                        "more than MAX_DROP (default 0.001); the table and the choice go into quant_placement.md")
    # shapes
    p.add_argument("--max-frames", type=cli.positive_int, default=360,
                   help="largest T (video length in frames) the VITA head accepts, 1..N (default 360); "
                        "the Triton server (`serve`) refuses longer videos before processing their frames")
    p.add_argument("--height", type=cli.positive_int,
                   help="fixed padded input height, a multiple of 32 (default: dynamic)")
    p.add_argument("--width", type=cli.positive_int,
                   help="fixed padded input width, a multiple of 32 (default: dynamic)")
    p.add_argument("--max-batch", type=cli.positive_int,
                   help="most frames per detector call (default: the config's chunk size)")
    p.add_argument("--graphs", nargs="+", choices=GRAPHS, default=list(GRAPHS),
                   help="graphs to export (default all three; mask_features is what --features recompute runs)")
    return p


@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy export") -> int:
    a = build_parser(prog).parse_args(argv)
    options = ExportOptions(a.deform_attn, a.precision, a.max_frames, a.height, a.width, a.max_batch,
                            a.calib_method, a.calib_frames, a.sensitivity)
    from vita_deploy.loading import default_checkpoint, load_model

    checkpoint = default_checkpoint(a.checkpoint, a.config)
    out = Path(a.out_dir)
    refuse_clobber({f"--out-dir file {name}": out / name
                    for name in (DETECTOR_FILE, VITA_FILE, MASK_FEATURES_FILE, MANIFEST_FILE, CALIB_FILE,
                                 PLACEMENT_JSON, PLACEMENT_MD, *CPU_INT8_FILES)},
                   {"--checkpoint": checkpoint, **{f"--calib {c}": c for c in a.calib or []}})
    print(f"loading the {a.config} model from {checkpoint or 'random weights'} ...", file=sys.stderr)
    model = load_model(checkpoint, a.config)  # refuses a checkpoint of another config
    export_model(model, a.out_dir, options, checkpoint, log=lambda msg: print(msg, file=sys.stderr),
                 graphs=tuple(a.graphs), calib=a.calib)
    return 0
