"""Run VITA on a video: `vita-deploy infer VIDEO [--checkpoint PATH] [--json results.json]`.

VIDEO is an mp4 (anything OpenCV decodes) or a folder of frames. Writes YouTube-VIS result JSON.
With --window W: the windowed (live) mode, also on a camera index, a stream URL or - (raw RGB24 on stdin);
see README "Live video".
Without --checkpoint the shipped `tiny` checkpoint is used (random weights if it is absent, with a warning).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from vita_deploy.commands import cli
from vita_deploy.config import canonical_config_name, config_names
from vita_deploy.errors import InputError
from vita_deploy.export.onnx_export import load_manifest
from vita_deploy.files import atomic_write, ensure_parents, refuse_clobber
from vita_deploy.loading import load_model
from vita_deploy.pipeline.inference import FEATURE_MODES
from vita_deploy.pipeline.render import VideoRenderer
from vita_deploy.pipeline.video_io import LIVE_HELP, is_live_spec, open_video
from vita_deploy.runtime.backends import backend_graphs, infer_file

@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy infer") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=_video_arg,
                        help="mp4 file or folder of frames; with --window also " + LIVE_HELP)
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
    add_live_args(parser)
    args = parser.parse_args(argv)
    if args.window is not None or is_live_spec(args.video) and not Path(args.video).exists():
        return run_live(args, parser)
    if args.amp and args.backend != "torch":
        parser.error("--amp is fp16 autocast of the eager model (--backend torch --device cuda); an export runs at "
                     "the precision it was exported with")
    if args.amp and not args.device.startswith("cuda"):
        parser.error("--amp (fp16 autocast) runs on CUDA only: on the CPU leave --amp out (the model runs in fp32)")
    if args.backend == "tensorrt" and not args.device.startswith("cuda"):
        parser.error("TensorRT engines run on a CUDA GPU only: use --backend onnxruntime or torch on the CPU")
    if args.backend != "torch" and not args.export:
        parser.error(f"--backend {args.backend} needs --export DIR (made by `vita-deploy export`)")
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


# ---- live and endless video: --window (README "Live video"; vita_deploy/pipeline/windowed.py) -----------------

def _video_arg(text: str) -> str:
    """An existing file or folder, or a live source spec ('-', a camera index, a URL)."""
    return text if is_live_spec(text) and not Path(text).exists() else cli.existing_path(text)


def add_live_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("live and endless video (README \"Live video\")")
    g.add_argument("--window", type=int, metavar="W",
                   help="windowed mode: VITA on each window of W frames, instances linked across windows into "
                        "tracks; bounded memory and latency; needed for cameras, URLs and stdin")
    g.add_argument("--overlap", type=int, default=0, metavar="O", help="frames shared by consecutive windows "
                   "(0 <= O < W); their masks' IoU joins the association")
    g.add_argument("--max-gap", type=int, default=2, metavar="G", help="windows a track may go unseen before it ends")
    g.add_argument("--match-threshold", type=float, default=0.5,
                   help="lowest association affinity (cosine, averaged with overlap IoU) that continues a track")
    g.add_argument("--jsonl", type=cli.output_file, help="one JSON line per window, flushed as each window is done")
    g.add_argument("--drop", choices=("wait", "late"), default="wait",
                   help="when the source outruns the pipeline: wait (files, pipes) or drop the oldest waiting "
                        "frames (late: live cameras and streams); drops are counted")
    g.add_argument("--stdin-size", metavar="WxH", help="frame size of raw RGB24 frames on stdin (video -)")
    g.add_argument("--stdin-fps", type=cli.positive_float, default=25.0, help="frame rate of the frames on stdin")
    g.add_argument("--timings", type=cli.output_file, help="JSON with per-window latency, sustained fps, stages")


def run_live(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`infer` with --window: windowed VITA over a file, folder, camera, URL or stdin
    (vita_deploy.pipeline.windowed)."""
    import signal
    import threading

    from vita_deploy.pipeline.render import TrackRenderer
    from vita_deploy.pipeline.video_io import open_source
    from vita_deploy.pipeline.windowed import (TrackWriter, WindowConfig, check_export_window, eager_track_graphs,
                                      mask_embed_association, run_windowed)

    if args.window is None:
        raise InputError(f"{args.video} is a live source (camera, stream URL or stdin pipe): it has no end and "
                         "cannot be read twice, so the offline modes (--features keep/recompute need every frame's "
                         "queries, rendering reads the video again) cannot run on it", None,
                         "pass --window W (e.g. --window 36 --overlap 6) for the windowed mode")
    if args.features != "auto":
        parser.error("--features chooses how the offline mode keeps mask features; --window keeps only its window's")
    if args.backend == "tensorrt" and not args.device.startswith("cuda"):
        parser.error("TensorRT engines run on a CUDA GPU only: use --backend onnxruntime or torch on the CPU")
    if args.backend != "torch" and not args.export:
        parser.error(f"--backend {args.backend} needs --export DIR (made by `vita-deploy export`)")
    if args.amp and (args.backend != "torch" or not args.device.startswith("cuda")):
        parser.error("--amp is fp16 autocast of the eager model on CUDA (--backend torch --device cuda)")
    wcfg = WindowConfig(args.window, args.overlap, args.max_gap, args.match_threshold)
    if args.export:  # before the source opens (a camera, a pipe): a bad export fails first
        check_export_window(load_manifest(args.export, check_graphs=True), args.window, args.export)
    source = open_source(args.video, stdin_size=args.stdin_size, stdin_fps=args.stdin_fps)
    inputs = {"VIDEO": getattr(source, "frame_files", None) or (None if getattr(source, "live", False)
                                                                    else args.video),
              "--checkpoint": args.checkpoint}
    if args.export:
        inputs["--export"] = [p for p in Path(args.export).iterdir() if p.is_file()]
    refuse_clobber({"--json": args.json, "--jsonl": args.jsonl, "--out": args.out, "--timings": args.timings},
                   inputs)
    ensure_parents(args.json, args.jsonl, args.out, args.timings)
    if args.backend == "torch":
        model = load_model(args.checkpoint, args.config).to(args.device)
        cfg, names = model.cfg, model.cfg.class_names
        detector, vita = eager_track_graphs(model, amp=args.amp)
    else:
        detector, plain_vita, cfg = backend_graphs(args.backend, args.export, args.device)
        vita = mask_embed_association(plain_vita)
        names = tuple(load_manifest(args.export)["config"].get("class_names") or ())
    writer = TrackWriter(args.json, args.jsonl, args.video_id, names)
    renderer = TrackRenderer(args.out, source.fps, names, args.score_threshold) if args.out else None
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print("\ninterrupted: finishing the frames already read (Ctrl-C again to abort)", file=sys.stderr)
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        summary = run_windowed(source, detector, vita, cfg, wcfg, writer=writer, sink=renderer, device=args.device,
                               drop=args.drop, stop=stop, num_frames=getattr(source, "num_frames", None),
                               progress=sys.stderr.isatty())
        writer.finish(summary.frames)
        if renderer is not None and renderer.frames:
            renderer.finish()
        elif renderer is not None:
            renderer.abort()
    except BaseException:
        writer.abort()
        if renderer is not None:
            renderer.abort()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    s = summary
    print(f"{s.frames} frames {s.width}x{s.height} in {s.windows} windows (W={wcfg.window}, O={wcfg.overlap}): "
          f"{s.tracks} tracks; sustained {s.fps:.2f} fps; latency per window (read of its oldest new frame -> masks "
          f"written) p50 {s.latency_p50:.3f} s, p95 {s.latency_p95:.3f} s, max {s.latency_max:.3f} s; "
          f"mean per frame {s.latency_mean_frame:.3f} s; dropped {s.dropped} frames (--drop {args.drop})")
    wrote = [str(p) for p in (args.json, args.jsonl, args.out if renderer is not None and renderer.frames else None)
             if p]
    print(f"wrote {', '.join(wrote)}" + (" (interrupted: every finished window is in them)" if s.interrupted else ""))
    if getattr(source, "partial_bytes", 0):
        print(f"warning: the stream ended inside a frame ({source.partial_bytes} bytes of a "
              f"{source.width}x{source.height} RGB24 frame): that frame was dropped", file=sys.stderr)
    if args.timings:
        from dataclasses import asdict
        record = asdict(s) | {"window": wcfg.window, "overlap": wcfg.overlap, "max_gap": wcfg.max_gap,
                              "drop": args.drop, "backend": args.backend, "device": args.device}
        atomic_write(args.timings, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    return 130 if s.interrupted else 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m vita_deploy.commands.infer"))
