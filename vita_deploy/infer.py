"""Run VITA on a video: `python -m vita_deploy.infer VIDEO [--checkpoint PATH] [--json results.json]`.

VIDEO is an mp4 (anything OpenCV decodes) or a folder of frames. Writes YouTube-VIS result JSON.
Without --checkpoint the shipped `tiny` checkpoint is used (random weights if it is absent, with a warning).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from vita_deploy.config import canonical_config_name, config_names, get_config
from vita_deploy import cli
from vita_deploy.pipeline.inference import (FEATURE_MODES, FrameSink, VideoPrediction, eager_graphs, eager_mask_features,
                                   run_video)
from vita_deploy.errors import InputError
from vita_deploy.export.onnx_export import load_manifest
from vita_deploy.files import atomic_write, ensure_parents, refuse_clobber
from vita_deploy.loading import load_model
from vita_deploy.modeling.model import VitaModel
from vita_deploy.pipeline.render import VideoRenderer
from vita_deploy.pipeline.video_io import open_video

def backend_graphs(backend: str, export: str | None, device: str):
    """(DetectorFn, VitaFn, ModelConfig) of an export on ONNX Runtime or TensorRT."""
    from vita_deploy.config import ModelConfig
    from vita_deploy.export.onnx_export import load_manifest

    if not export:
        raise InputError(f"--backend {backend} needs an export", None,
                         "pass --export DIR (made by `python export/to_onnx.py`)")
    cfg = ModelConfig.from_dict(load_manifest(export)["config"])
    if backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_graphs
        return (*ort_graphs(export, device=device), cfg)
    from vita_deploy.runtime import tensorrt_graphs
    return (*tensorrt_graphs(export, device=device), cfg)


def backend_mask_features(backend: str, export: str, device: str):
    """The export's mask-feature graph (MaskFeaturesFn) on ONNX Runtime or TensorRT, None if it has none."""
    if backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_mask_features
        return ort_mask_features(export, device=device)
    from vita_deploy.runtime import tensorrt_mask_features
    return tensorrt_mask_features(export, device=device)


def infer_file(video: str | Path, model: VitaModel | None, device: str = "cpu", amp: bool = False,
               progress: bool = True, backend: str = "torch", export: str | None = None, features: str = "auto",
               spill_dir: str | None = None, host_budget_mb: float | None = None,
               sink: FrameSink | None = None) -> VideoPrediction:
    """Whole-video inference on the eager model (backend "torch") or an export (onnxruntime, tensorrt).
    features: "auto" | "keep" | "recompute"; sink: e.g. a VideoRenderer (see `run_video`)."""
    source = open_video(video)
    if backend == "torch":
        model = model.to(device)
        detector, vita = eager_graphs(model, amp=amp)
        mask_features = eager_mask_features(model, amp=amp)
        cfg = model.cfg
    else:
        detector, vita, cfg = backend_graphs(backend, export, device)
        mask_features = backend_mask_features(backend, export, device) if features != "keep" else None
        if features == "recompute" and mask_features is None:
            raise InputError(f"--features recompute needs the mask-feature graph, which {export} does not have: "
                             "re-export with `python export/to_onnx.py` (it writes mask_features.onnx)")
    start = time.perf_counter()
    pred = run_video(source, detector, vita, cfg, mask_features=mask_features, features=features, device=device,
                     num_frames=source.num_frames, progress=progress, spill_dir=spill_dir,
                     host_budget_mb=host_budget_mb, sink=sink)
    pred.timings["total_s"] = time.perf_counter() - start
    return pred


@cli.command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=cli.existing_path, help="mp4 file or folder of frames")
    parser.add_argument("--checkpoint", type=cli.existing_file, help="our .pth or an official VITA model_final.pth")
    parser.add_argument("--config", choices=config_names(), type=canonical_config_name,
                        help="config for official/random weights")
    parser.add_argument("--json", type=cli.output_file, default="results.json",
                        help="YouTube-VIS result JSON to write")
    parser.add_argument("--out", type=cli.output_file,
                        help="rendered mp4 to write (masks, classes, class probabilities) at the source frame rate; "
                             "made in the second pass over the video in recompute mode")
    parser.add_argument("--score-threshold", type=cli.unit_float, default=0.3,
                        help="instances shown in --out: class probability at least this (README \"Rendering\")")
    parser.add_argument("--video-id", type=int, default=1, help="video_id written in the results")
    parser.add_argument("--device", type=cli.device, default=cli.default_device())
    parser.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA (as the official eval)")
    parser.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default="torch",
                        help="eager PyTorch, or the ONNX files / engines of --export")
    parser.add_argument("--export", type=cli.existing_dir,
                        help="export folder (manifest.json) for --backend onnxruntime/tensorrt")
    parser.add_argument("--features", choices=FEATURE_MODES, default="auto",
                        help="mask features: keep them in memory, recompute them in a second pass over the video "
                             "(flat memory, any length), or auto: keep while they fit the host budget (README)")
    parser.add_argument("--host-budget-mb", type=cli.positive_float,
                        help="host memory for kept mask features (auto: a quarter of the RAM)")
    parser.add_argument("--spill-dir", help="folder where kept mask features beyond the budget may go to disk "
                                            "(never used unless given)")
    args = parser.parse_args(argv)
    if args.amp and args.backend != "torch":
        parser.error("--amp is fp16 autocast of the eager model (--backend torch --device cuda); an export runs at "
                     "the precision it was exported with")
    if args.amp and not args.device.startswith("cuda"):
        parser.error("--amp (fp16 autocast) runs on CUDA only: on the CPU leave --amp out (the model runs in fp32)")
    if args.backend == "tensorrt" and not args.device.startswith("cuda"):
        parser.error("TensorRT engines run on a CUDA GPU only: use --backend onnxruntime or torch on the CPU")
    if args.backend != "torch" and not args.export:
        parser.error(f"--backend {args.backend} needs --export DIR (made by `python export/to_onnx.py`)")
    source = open_video(args.video)
    inputs = {"VIDEO": source.frame_files or args.video, "--checkpoint": args.checkpoint}
    if args.export:
        inputs["--export"] = [p for p in Path(args.export).iterdir() if p.is_file()]
        load_manifest(args.export, check_graphs=True)
    refuse_clobber({"--json": args.json, "--out": args.out}, inputs)
    ensure_parents(args.json, args.out)
    model = load_model(args.checkpoint, args.config) if args.backend == "torch" else None
    if model is not None:
        names = model.cfg.class_names
    else:
        names = tuple(load_manifest(args.export)["config"].get("class_names") or ())
    renderer = VideoRenderer(args.out, source.fps, names, args.score_threshold) if args.out else None
    with renderer or contextlib.nullcontext():
        pred = infer_file(args.video, model, args.device, args.amp, backend=args.backend, export=args.export,
                          features=args.features, spill_dir=args.spill_dir, host_budget_mb=args.host_budget_mb,
                          sink=renderer)
    results = pred.to_ytvis(args.video_id)
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results)))
    render_s = pred.timings.get("render", 0.0)
    seconds = pred.timings["total_s"] - render_s
    print(f"{pred.num_frames} frames {pred.width}x{pred.height} in {seconds:.2f} s "
          f"({pred.num_frames / seconds:.2f} fps, {pred.features_mode} mode); "
          f"wrote {len(results)} instances to {args.json}")
    print(f"  {'class':>14s}  score  (class probability x mask score)")
    for score, cls, label in zip(pred.scores, pred.class_scores, pred.labels):
        mask_score = score / cls if cls else 0.0
        print(f"  {names[label] if names else label:>14s}  {score:.3f}  ({cls:.3f} x {mask_score:.3f})")
    if renderer is not None:
        when = "during the second pass" if pred.features_mode == "recompute" else "in a second read"
        print(f"rendered {args.out}: {len(renderer.shown)} instances with class probability >= "
              f"{args.score_threshold}, {render_s:.2f} s {when}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
