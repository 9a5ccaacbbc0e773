"""The main job on the embedded default: `vita-deploy demo --out outputs/demo` (what `make demo` runs).

Generates a few synthetic YouTube-VIS videos, runs whole-video VITA inference with the shipped `tiny`
checkpoint, writes YouTube-VIS results and rendered mp4s, and evaluates them against the ground truth.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vita_deploy.commands import cli
from vita_deploy.data.synthetic import generate_split
from vita_deploy.errors import OutputClobberError
from vita_deploy.data.ytvis_json import load_ytvis_json
from vita_deploy.evaluation import evaluate_ytvis
from vita_deploy.loading import DEFAULT_CHECKPOINT, load_model
from vita_deploy.pipeline.inference import eager_graphs, run_video
from vita_deploy.files import atomic_write
from vita_deploy.pipeline.render import VideoRenderer
from vita_deploy.pipeline.video_io import VideoSource


@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy demo") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=cli.output_dir, default="outputs/demo",
                   help="output folder (empty, new, or a previous demo's; anything else needs --overwrite)")
    p.add_argument("--videos", type=cli.positive_int, default=4, help="synthetic videos to generate and segment")
    p.add_argument("--seed", type=cli.nonnegative_int, default=2024, help="data seed (disjoint from the training seed)")
    p.add_argument("--checkpoint", type=cli.existing_file, help="default: the shipped tiny checkpoint")
    p.add_argument("--render", type=cli.nonnegative_int, default=2, help="how many videos to render as mp4")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder that is not a demo's")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not (out / "data" / "valid.json").is_file() and not args.overwrite:
        raise OutputClobberError("--out is a non-empty folder that is not a previous demo's output", out,
                                 "pass a new or empty folder, or --overwrite")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    print(f"[1/4] generating {args.videos} synthetic videos (seed {args.seed}) in {out / 'data'}")
    gt_path = generate_split(out / "data", "valid", args.videos, args.seed)
    gt = load_ytvis_json(gt_path)

    ckpt = args.checkpoint or (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() else None)
    print(f"[2/4] loading model: {ckpt or 'tiny config, random weights (no shipped checkpoint found)'}")
    model = load_model(ckpt, None if ckpt else "tiny")
    detector, vita = eager_graphs(model)
    category_ids = sorted(c["id"] for c in gt["categories"])

    print("[3/4] whole-video inference")
    results, frames_total, seconds = [], 0, 0.0
    image_root = gt_path.parent / "valid" / "JPEGImages"
    for i, video in enumerate(gt["videos"]):
        files = [image_root / name for name in video["file_names"]]
        source = VideoSource(files[0].parent, video["height"], video["width"], len(files), 6.0, files)
        mp4 = out / f"video_{video['id']}.mp4"
        start = time.perf_counter()
        with VideoRenderer(mp4, source.fps, model.cfg.class_names) as renderer:
            pred = run_video(source, detector, vita, model.cfg, num_frames=len(files),
                             sink=renderer if i < args.render else None)
        seconds += time.perf_counter() - start - pred.timings.get("render", 0.0)
        frames_total += len(files)
        results.extend(pred.to_ytvis(video["id"], category_ids))
        if i < args.render:
            print(f"      rendered {mp4}")
    results_path = atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results)))
    print(f"      {frames_total} frames in {seconds:.1f} s ({frames_total / seconds:.1f} fps end to end, CPU, "
          f"decode + inference + RLE); results: {results_path}")

    print("[4/4] YouTube-VIS evaluation against the synthetic ground truth")
    metrics = evaluate_ytvis(gt, results)
    print("      " + "  ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m vita_deploy.commands.demo"))
