"""Run VITA on a video: `python -m vita_deploy.infer VIDEO [--checkpoint PATH] [--json results.json]`.

VIDEO is an mp4 (anything OpenCV decodes) or a folder of frames. Writes YouTube-VIS result JSON.
Without --checkpoint the shipped `tiny` checkpoint is used (random weights if it is absent, with a warning).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vita_deploy.config import canonical_config_name, config_names, get_config
from vita_deploy.inference import VideoPrediction, eager_graphs, run_video
from vita_deploy.files import atomic_write
from vita_deploy.loading import load_model
from vita_deploy.modeling.checkpoint import CheckpointError
from vita_deploy.modeling.model import VitaModel
from vita_deploy.render import render_video
from vita_deploy.video_io import VideoReadError, open_video

def backend_graphs(backend: str, export: str | None, device: str):
    """(DetectorFn, VitaFn, ModelConfig) of an export on ONNX Runtime or TensorRT."""
    from vita_deploy.config import ModelConfig
    from vita_deploy.export.onnx_export import load_manifest

    if not export:
        raise ValueError(f"--backend {backend} needs --export DIR (from `python export/to_onnx.py`)")
    cfg = ModelConfig.from_dict(load_manifest(export)["config"])
    if backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_graphs
        return (*ort_graphs(export, device=device), cfg)
    from vita_deploy.runtime import tensorrt_graphs
    return (*tensorrt_graphs(export, device=device), cfg)


def infer_file(video: str | Path, model: VitaModel | None, device: str = "cpu", amp: bool = False,
               progress: bool = True, backend: str = "torch", export: str | None = None) -> VideoPrediction:
    """Whole-video inference on the eager model (backend "torch") or an export (onnxruntime, tensorrt)."""
    source = open_video(video)
    if backend == "torch":
        model = model.to(device)
        detector, vita = eager_graphs(model, amp=amp)
        cfg = model.cfg
    else:
        detector, vita, cfg = backend_graphs(backend, export, device)
    start = time.perf_counter()
    pred = run_video(source, detector, vita, cfg, device=device, num_frames=source.num_frames, progress=progress)
    pred.timings["total_s"] = time.perf_counter() - start
    return pred


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="mp4 file or folder of frames")
    parser.add_argument("--checkpoint", help="our .pth or an official VITA model_final.pth")
    parser.add_argument("--config", choices=config_names(), type=canonical_config_name, help="config for official/random weights")
    parser.add_argument("--json", default="results.json", help="YouTube-VIS result JSON to write")
    parser.add_argument("--out", help="rendered mp4 to write (masks, classes, scores) at the source frame rate")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="instances shown in --out")
    parser.add_argument("--video-id", type=int, default=1, help="video_id written in the results")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA (as the official eval)")
    parser.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default="torch",
                        help="eager PyTorch, or the ONNX files / engines of --export")
    parser.add_argument("--export", help="export folder (manifest.json) for --backend onnxruntime/tensorrt")
    args = parser.parse_args(argv)
    if args.amp and args.backend != "torch":
        parser.error("--amp is fp16 autocast of the eager model (--backend torch --device cuda); an export runs at "
                     "the precision it was exported with")
    try:
        model = load_model(args.checkpoint, args.config) if args.backend == "torch" else None
        pred = infer_file(args.video, model, args.device, args.amp, backend=args.backend, export=args.export)
    except (VideoReadError, CheckpointError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = pred.to_ytvis(args.video_id)
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results)))
    if model is not None:
        names = model.cfg.class_names
    else:
        from vita_deploy.export.onnx_export import load_manifest
        names = tuple(load_manifest(args.export)["config"].get("class_names") or ())
    print(f"{pred.num_frames} frames {pred.width}x{pred.height} in {pred.timings['total_s']:.2f} s "
          f"({pred.num_frames / pred.timings['total_s']:.2f} fps); wrote {len(results)} instances to {args.json}")
    for score, label in zip(pred.scores, pred.labels):
        print(f"  {names[label] if names else label:>14s}  {score:.3f}")
    if args.out:
        source = open_video(args.video)
        render_video(source, pred, args.out, source.fps, names, args.score_threshold)
        print(f"rendered {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
