"""Windowed (live) mode against offline VITA: AP, identity switches, latency and fps against the window size.

    python benchmarks/bench_windowed.py --videos 12 --frames 144 --windows 18 36 72 --overlaps 0 6 \\
        --out benchmarks/results/cpu_windowed

Writes synthetic validation videos (`vita_deploy.data.synthetic`, JPEG frame folders with YouTube-VIS ground
truth: 1-4 textured shapes that move, scale, rotate, occlude and cross each other, some entering late or leaving
early) of --frames frames each, long enough for several windows, then runs the shipped tiny checkpoint offline
(`run_video`, keep mode) and windowed (`run_windowed`, every W x O) on each and evaluates every run with the
project's YouTube-VIS evaluator. Identity switches (IDSW) are counted against the ground truth: on each frame an
object's owner is the highest-scoring result (score >= 0.3) whose mask has IoU > 0.5 with it, and every change of
owner between the frames where it has one is a switch (offline VITA has one instance per object for the whole
video, so its switches come from instances that cover an object only in part of the video).

Latency and fps: AP runs read the frames as fast as they decode; the latency runs (--latency-videos of them per
setting) feed the frames at --pace-fps, like a camera, so a window's latency is the time its oldest new frame
waits for the window to fill (S = W - O frames at the source rate) plus the compute, not a read-ahead queue.

Writes OUT.json (rows, machine, command), OUT.md (the table the README quotes) and OUT.png (AP and latency
against W, one line per overlap, offline AP as a line).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.benchmark import environment, write_rows  # noqa: E402,I001
from vita_deploy.data.synthetic import generate_split  # noqa: E402
from vita_deploy.data.ytvis_json import load_ytvis_json, segmentation_to_rle  # noqa: E402
from vita_deploy.evaluation.ytvis_eval import evaluate_ytvis  # noqa: E402
from vita_deploy.pipeline.inference import eager_graphs, run_video  # noqa: E402
from vita_deploy.loading import load_model  # noqa: E402
from vita_deploy.pipeline.video_io import open_video  # noqa: E402
from vita_deploy.pipeline.windowed import (Track, TrackWriter, WindowConfig, eager_track_graphs,  # noqa: E402
                                           mask_embed_association, run_windowed)


def identity_switches(results: list[dict], gt: dict, video_id: int, min_score: float = 0.3) -> int:
    """Changes of owner of each ground-truth object over its frames (module docstring)."""
    video = next(v for v in gt["videos"] if v["id"] == video_id)
    h, w = video["height"], video["width"]
    dets = [r for r in results if r["video_id"] == video_id and r["score"] >= min_score]
    switches = 0
    for ann in (a for a in gt["annotations"] if a["video_id"] == video_id):
        last = None
        for t, seg in enumerate(ann["segmentations"]):
            if seg is None:
                continue
            g = segmentation_to_rle(seg, h, w)
            best = None
            for n, d in enumerate(dets):
                s = d["segmentations"][t]
                if s is not None and float(mask_utils.iou([s], [g], [0])[0, 0]) > 0.5:
                    if best is None or d["score"] > dets[best]["score"]:
                        best = n
            if best is not None:
                switches += last is not None and best != last
                last = best
    return switches


def paced(frames, fps: float):
    """Yield frames no faster than `fps` (a camera's clock)."""
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        delay = start + i / fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield frame


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--frames", type=int, default=144, help="frames per synthetic video")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--windows", type=int, nargs="+", default=[18, 36, 72])
    p.add_argument("--overlaps", type=int, nargs="+", default=[0, 6])
    p.add_argument("--max-gap", type=int, default=2)
    p.add_argument("--pace-fps", type=float, default=25.0, help="source rate of the latency runs")
    p.add_argument("--latency-videos", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--score-ablation", action="store_true",
                   help="also run W=36, O=6 with two other track-score rules (plain and mask-area-weighted mean of "
                        "the windows' scores) in place of `Track.score`, and with the exports' association (on "
                        "mask embeddings instead of clip-query embeddings)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_windowed"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(argv)
    model = load_model(None, "tiny").eval()
    cfg = model.cfg
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gt_path = generate_split(tmp, "valid", args.videos, args.seed, args.frames, args.frames, progress=False)
        gt = load_ytvis_json(gt_path)
        root = tmp / "valid" / "JPEGImages"
        videos = [(v["id"], [open_video(root / Path(v["file_names"][0]).parent)]) for v in gt["videos"]]
        frames = {vid: list(src[0]) for vid, src in videos}  # decoded once: every setting sees the same frames
        objects = sum(1 for _ in gt["annotations"])

        detector, vita = eager_graphs(model)
        offline, seconds = [], 0.0
        for vid, f in frames.items():
            start = time.perf_counter()
            offline += run_video(f, detector, vita, cfg, features="keep", overlap=False).to_ytvis(vid)
            seconds += time.perf_counter() - start
        metrics = evaluate_ytvis(gt, offline)
        total_frames = sum(len(f) for f in frames.values())
        rows.append({"mode": "offline", "window": None, "overlap": None, "AP": metrics["AP"], "AP50": metrics["AP50"],
                     "AR10": metrics["AR10"], "idsw": sum(identity_switches(offline, gt, vid) for vid in frames),
                     "instances": len(offline), "fps": total_frames / seconds,
                     "latency_p50_s": None, "latency_p95_s": None})
        print(f"offline: AP {metrics['AP']:.1f}, {rows[-1]['idsw']} ID switches, {rows[-1]['fps']:.1f} fps",
              flush=True)

        tdetector, tvita = eager_track_graphs(model)
        for window in args.windows:
            for overlap in args.overlaps:
                if overlap >= window:
                    continue
                wcfg = WindowConfig(window, overlap, args.max_gap)
                results, seconds, windows = [], 0.0, 0
                for vid, f in frames.items():
                    writer = TrackWriter(tmp / "w.json", None, video_id=vid)
                    start = time.perf_counter()
                    s = run_windowed(iter(f), tdetector, tvita, cfg, wcfg, writer=writer)
                    writer.finish(s.frames)
                    seconds += time.perf_counter() - start
                    windows += s.windows
                    results += json.loads((tmp / "w.json").read_text())
                lat50, lat95, paced_fps = [], [], []
                for vid in list(frames)[:args.latency_videos]:
                    s = run_windowed(paced(frames[vid], args.pace_fps), tdetector, tvita, cfg, wcfg)
                    lat50.append(s.latency_p50)
                    lat95.append(s.latency_p95)
                    paced_fps.append(s.fps)
                m = evaluate_ytvis(gt, results)
                rows.append({"mode": "windowed", "window": window, "overlap": overlap, "AP": m["AP"],
                             "AP50": m["AP50"], "AR10": m["AR10"],
                             "idsw": sum(identity_switches(results, gt, vid) for vid in frames),
                             "instances": len(results), "windows": windows, "fps": total_frames / seconds,
                             "latency_p50_s": statistics.median(lat50), "latency_p95_s": max(lat95),
                             "paced_fps": statistics.median(paced_fps)})
                r = rows[-1]
                print(f"W={window} O={overlap}: AP {r['AP']:.1f} ({r['AP'] - rows[0]['AP']:+.1f}), {r['idsw']} ID "
                      f"switches, {r['instances']} tracks, {r['fps']:.1f} fps, "
                      f"latency p50 {r['latency_p50_s']:.2f} s "
                      f"p95 {r['latency_p95_s']:.2f} s at {args.pace_fps:g} fps", flush=True)
        if args.score_ablation:
            rules = {"plain mean": lambda t: t.score_sum / t.windows,
                     "area-weighted mean": lambda t: (t.weighted_sum / t.area_sum if t.area_sum > 0
                                                      else t.score_sum / t.windows)}
            shipped = Track.score
            try:
                for name, rule in rules.items():
                    Track.score = property(lambda t, rule=rule: t.first_score if t.windows == 1 else rule(t))
                    results = []
                    for vid, f in frames.items():
                        writer = TrackWriter(tmp / "w.json", None, video_id=vid)
                        s = run_windowed(iter(f), tdetector, tvita, cfg, WindowConfig(36, 6, args.max_gap),
                                         writer=writer)
                        writer.finish(s.frames)
                        results += json.loads((tmp / "w.json").read_text())
                    m = evaluate_ytvis(gt, results)
                    rows.append({"mode": f"windowed, score: {name}", "window": 36, "overlap": 6, "AP": m["AP"],
                                 "AP50": m["AP50"], "AR10": m["AR10"],
                                 "idsw": sum(identity_switches(results, gt, vid) for vid in frames),
                                 "instances": len(results), "fps": None, "latency_p50_s": None,
                                 "latency_p95_s": None})
                    print(f"score rule {name}: AP {m['AP']:.1f} ({m['AP'] - rows[0]['AP']:+.1f})", flush=True)
            finally:
                Track.score = shipped
            # what the exports do: associate on the mask embeddings (their VITA graph has no clip-query output)
            results = []
            for vid, f in frames.items():
                writer = TrackWriter(tmp / "w.json", None, video_id=vid)
                s = run_windowed(iter(f), tdetector, mask_embed_association(vita), cfg,
                                 WindowConfig(36, 6, args.max_gap), writer=writer)
                writer.finish(s.frames)
                results += json.loads((tmp / "w.json").read_text())
            m = evaluate_ytvis(gt, results)
            rows.append({"mode": "windowed, association on mask embeddings (exports)", "window": 36, "overlap": 6,
                         "AP": m["AP"], "AP50": m["AP50"], "AR10": m["AR10"],
                         "idsw": sum(identity_switches(results, gt, vid) for vid in frames),
                         "instances": len(results), "fps": None, "latency_p50_s": None, "latency_p95_s": None})
            print(f"association on mask embeddings: AP {m['AP']:.1f} ({m['AP'] - rows[0]['AP']:+.1f}), "
                  f"{rows[-1]['idsw']} ID switches", flush=True)
    env.update({"videos": args.videos, "frames_per_video": args.frames, "objects": objects, "seed": args.seed,
                "pace_fps": args.pace_fps, "latency_videos": args.latency_videos, "max_gap": args.max_gap})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(args.out, env, rows, markdown(rows, env))
    plot(rows, args.out.with_suffix(".png"), args.pace_fps)
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0


def markdown(rows: list[dict], env: dict) -> str:
    off = rows[0]
    lines = [f"# Windowed vs offline VITA (tiny checkpoint, synthetic validation videos)\n",
             f"{env['videos']} videos x {env['frames_per_video']} frames ({env['objects']} objects), "
             f"seed {env['seed']}; "
             f"max gap {env['max_gap']} windows. Machine: {env['processor']}, {env['cpu_count']} cores, torch "
             f"{env['torch']} ({env['torch_threads']} threads), {env['date']}.  ",
             f"Command: `{env['command']}`\n",
             f"Latency: read of a window's oldest new frame -> its masks written, with the frames fed at "
             f"{env['pace_fps']:g} fps ({env['latency_videos']} videos per setting; p50 median over videos, p95 the "
             "worst). fps: frames read as fast as they decode.\n",
             "| mode | W | O | AP | AP vs offline | AP50 | AR10 | ID switches | instances | fps | latency p50 s "
             "| latency p95 s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lat = (f"{r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f}" if r["latency_p50_s"] is not None
               else "- (whole video) | -" if r["mode"] == "offline" else "- | -")
        fps = f"{r['fps']:.1f}" if r["fps"] is not None else "-"
        lines.append(f"| {r['mode']} | {r['window'] or '-'} | {r['overlap'] if r['overlap'] is not None else '-'} "
                     f"| {r['AP']:.1f} | {r['AP'] - off['AP']:+.1f} | {r['AP50']:.1f} | {r['AR10']:.1f} "
                     f"| {r['idsw']} "
                     f"| {r['instances']} | {fps} | {lat} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, pace_fps: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    off = rows[0]
    shipped = [r for r in rows if r["mode"] == "windowed"]
    for overlap in sorted({r["overlap"] for r in shipped}):
        rs = sorted((r for r in shipped if r["overlap"] == overlap), key=lambda r: r["window"])
        ax1.plot([r["window"] for r in rs], [r["AP"] for r in rs], "o-", label=f"windowed, O={overlap}")
        ax2.plot([r["window"] for r in rs], [r["latency_p50_s"] for r in rs], "o-", label=f"p50, O={overlap}")
        ax2.plot([r["window"] for r in rs], [r["latency_p95_s"] for r in rs], "x--", label=f"p95, O={overlap}")
    ax1.axhline(off["AP"], color="k", ls=":", label="offline")
    ax1.set_xlabel("window W (frames)")
    ax1.set_ylabel("AP")
    ax1.set_title("accuracy")
    ax2.set_xlabel("window W (frames)")
    ax2.set_ylabel(f"latency s (source at {pace_fps:g} fps)")
    ax2.set_title("latency: frame read -> masks written")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
