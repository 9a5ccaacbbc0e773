"""Export VITA's two graphs to ONNX.

    python export/to_onnx.py --config tiny --out-dir exports/tiny_native --deform-attn native
    python export/to_onnx.py --config r50 --checkpoint model_final.pth --out-dir exports/r50 --precision fp16

Writes frame_detector.onnx, vita_head.onnx and manifest.json (I/O, dtypes, shape profiles, opset,
deformable-attention mode, precision, config, checkpoint hash). `--deform-attn plugin` (default) emits
NVIDIA's MultiscaleDeformableAttnPlugin_TRT (datacenter TensorRT >= 10.11); `native` uses standard
operators only (ONNX Runtime, TensorRT-RTX, any TensorRT without plugins).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.export.onnx_export import ExportError, ExportOptions, export_model  # noqa: E402
from vita_deploy.infer import DEFAULT_CHECKPOINT, load_model  # noqa: E402
from vita_deploy.modeling.checkpoint import CheckpointError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["tiny", "r50"], default="tiny")
    p.add_argument("--checkpoint", help="default: the shipped tiny checkpoint (tiny), random weights (r50)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--deform-attn", choices=["plugin", "native"], default="plugin")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--max-frames", type=int, default=360, help="largest T the VITA head accepts")
    p.add_argument("--height", type=int, help="fixed padded input height (multiple of 32); default dynamic")
    p.add_argument("--width", type=int, help="fixed padded input width (multiple of 32); default dynamic")
    a = p.parse_args(argv)
    try:
        options = ExportOptions(a.deform_attn, a.precision, a.max_frames, a.height, a.width)
        checkpoint = a.checkpoint or (DEFAULT_CHECKPOINT if a.config == "tiny" and DEFAULT_CHECKPOINT.is_file()
                                      else None)
        model = load_model(checkpoint, a.config)
        export_model(model, a.out_dir, options, checkpoint)
    except (ExportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
