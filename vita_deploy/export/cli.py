"""`python export/to_onnx.py`: export VITA's two graphs to ONNX.

    python export/to_onnx.py --config tiny --out-dir exports/tiny_native --deform-attn native
    python export/to_onnx.py --config r50 --checkpoint model_final.pth --out-dir exports/r50 --precision fp16

Writes frame_detector.onnx, vita_head.onnx and manifest.json (I/O names, dtypes, symbolic dims with min/opt/max,
opset, deformable-attention mode, precision, model config, checkpoint sha256, exporter version).
`--deform-attn plugin` (default) emits NVIDIA's MultiscaleDeformableAttnPlugin_TRT (datacenter TensorRT >= 10.11,
NVIDIA's fused kernel); `native` uses standard operators only (ONNX Runtime, TensorRT-RTX, any TensorRT, no
plugin library). Without --checkpoint: the shipped tiny checkpoint for --config tiny, else random weights.
"""
from __future__ import annotations

import argparse
import sys

from vita_deploy.config import canonical_config_name, config_names
from vita_deploy.export.onnx_export import ExportError, ExportOptions, export_model
from vita_deploy.modeling.checkpoint import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export/to_onnx.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    p.add_argument("--config", choices=config_names(), type=canonical_config_name, default="tiny", help="model config")
    p.add_argument("--checkpoint", help="our .pth or an official VITA model_final.pth (default: shipped tiny "
                                        "checkpoint for tiny, random weights otherwise)")
    # output
    p.add_argument("--out-dir", required=True, help="folder for the two .onnx files and manifest.json")
    p.add_argument("--deform-attn", choices=["plugin", "native"], default="plugin",
                   help="plugin: NVIDIA's TensorRT plugin node; native: standard ONNX ops (Gather-based)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: half-precision graph with fp32 islands (for strongly typed builders)")
    # shapes
    p.add_argument("--max-frames", type=int, default=360, help="largest T the VITA head accepts (1..N)")
    p.add_argument("--height", type=int, help="fixed padded input height, a multiple of 32 (default: dynamic)")
    p.add_argument("--width", type=int, help="fixed padded input width, a multiple of 32 (default: dynamic)")
    p.add_argument("--max-batch", type=int, help="most frames per detector call (default: the config's chunk size)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        options = ExportOptions(a.deform_attn, a.precision, a.max_frames, a.height, a.width, a.max_batch)
        from vita_deploy.loading import DEFAULT_CHECKPOINT, load_model

        checkpoint = a.checkpoint
        if checkpoint is None and a.config == "tiny" and DEFAULT_CHECKPOINT.is_file():
            checkpoint = DEFAULT_CHECKPOINT
        print(f"loading the {a.config} model from {checkpoint or 'random weights'} ...", file=sys.stderr)
        model = load_model(checkpoint, a.config)
        if model.cfg.name != a.config:
            raise ExportError(f"{checkpoint} holds a '{model.cfg.name}' model, not '{a.config}': pass "
                              f"--config {model.cfg.name} or the right checkpoint")
        export_model(model, a.out_dir, options, checkpoint, log=lambda msg: print(msg, file=sys.stderr))
    except (ExportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
