"""Keep vs recompute: peak memory, disk and time against video length, and post-processing per frame.

    python benchmarks/bench_streaming.py --config tiny --resolution 360p --frames 36 360 3600 10000 \\
        --features auto keep recompute --max-keep-frames 1000 --out benchmarks/results/cpu_memory
    python benchmarks/bench_streaming.py --config tiny --postprocess-study 36 --out benchmarks/results/cpu_postprocess
    python benchmarks/bench_streaming.py --config r50 --device cuda --precision fp16 --frames 36 3600 \\
        --features keep recompute --resolution 360p 720p --out benchmarks/results/gpu_streaming
    python benchmarks/bench_streaming.py --config tiny --frames 36 1500 --features keep recompute --render \\
        --resolution 1080p --out benchmarks/results/cpu_render

Every (resolution, frames, features) run is a fresh child process, so its peak host memory (VmHWM) and GPU
peak (the allocator's) are its own; it decodes a moving-shapes mp4 (written once per length), twice in recompute
mode. With --render every run also writes the annotated mp4 (`VideoRenderer`: during pass 2 in recompute mode,
in a second read in keep mode); its time is reported apart ("render ms/frame") and excluded from fps. "disk" is
what the feature store spilled (never anything unless --spill-dir is given). Keep runs longer
than --max-keep-frames are listed as not run, with the memory they would need. Post-processing study: the
shipped post-processing (windowed matmuls on the device, `vita_deploy.pipeline.postprocess`) against the previous one
(full-frame `F.interpolate` twice, then pycocotools on a host copy) on the same real model outputs.

Writes NAME.json (runs, machine, command), NAME.md (tables and the ratios the README quotes) and NAME_memory.png /
NAME_fps.png (against video length, one line per features mode).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.benchmark import (RESOLUTIONS, environment, host_peak_mb, make_benchmark_video,  # noqa: E402,I001
                                   reset_host_peak, set_matmul_precision)
from vita_deploy.config import canonical_config_name, config_names  # noqa: E402
from vita_deploy.pipeline.inference import FEATURE_MODES  # noqa: E402


def graphs(backend: str, precision: str, model, device: torch.device, export: str | None, threads: int | None):
    """(detector, vita, mask_features) callables of a backend."""
    from vita_deploy.pipeline.inference import eager_graphs, eager_mask_features

    amp = precision == "fp16"
    if backend == "torch":
        return (*eager_graphs(model, amp=amp), eager_mask_features(model, amp=amp))
    if backend == "torch-compile":
        detector = model.frame_detector
        mask_fn = torch.compile(detector.mask_features)
        model.frame_detector = torch.compile(detector)
        model.vita_head = torch.compile(model.vita_head, dynamic=True)
        det, vita = eager_graphs(model, amp=amp)

        def mask_features(images: torch.Tensor) -> torch.Tensor:
            with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
                return mask_fn(images).float()
        return det, vita, mask_features
    if backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_graphs, ort_mask_features
        return (*ort_graphs(export, device=device, threads=threads), ort_mask_features(export, device, threads))
    if backend == "tensorrt":
        from vita_deploy.runtime import tensorrt_graphs, tensorrt_mask_features
        return (*tensorrt_graphs(export, device=device), tensorrt_mask_features(export, device))
    raise ValueError(f"unknown backend {backend}")


def child(spec: dict) -> dict:
    """One run in this (fresh) process: `spec` names model, backend, clip and features mode."""
    from vita_deploy.pipeline.inference import run_video
    from vita_deploy.loading import load_model
    from vita_deploy.modeling.ms_deform_attn import deform_attn_implementation
    from vita_deploy.pipeline.render import VideoRenderer
    from vita_deploy.pipeline.video_io import open_video

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    tf32 = set_matmul_precision(spec["precision"]) if spec["backend"] in ("torch", "torch-compile") else None
    model = load_model(spec.get("checkpoint"), spec["config"]).to(device)
    det, vita, mask_fn = graphs(spec["backend"], spec["precision"], model, device, spec.get("export"),
                                spec.get("threads"))
    cfg = model.cfg
    times, walls, preds = [], [], []
    with deform_attn_implementation(spec.get("deform_attn") or "auto"):
        if spec.get("warmup_frames"):  # one untimed short run: kernels selected, allocator and caches warm
            head = []
            for frame in open_video(spec["clip"]):
                head.append(frame)
                if len(head) == spec["warmup_frames"]:
                    break
            run_video(head, det, vita, cfg, mask_features=mask_fn, features=spec["features"], device=device)
        for i in range(spec["warmup"] + spec["repeats"]):
            source = open_video(spec["clip"])
            reset_host_peak()
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            renderer = VideoRenderer(Path(spec["clip"]).with_suffix(".rendered.mp4"), source.fps,
                                     cfg.class_names) if spec.get("render") else None
            with renderer or contextlib.nullcontext():
                pred = run_video(source, det, vita, cfg, mask_features=mask_fn, features=spec["features"],
                                 device=device, num_frames=source.num_frames, spill_dir=spec.get("spill_dir"),
                                 feature_dtype=torch.float16 if spec.get("fp16_features") else torch.float32,
                                 sink=renderer)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= spec["warmup"]:
                walls.append(time.perf_counter() - start)
                times.append(walls[-1] - pred.timings.get("render", 0.0))
                preds.append(pred)
    pred = preds[-1]
    e2e = statistics.median(times)
    t = pred.timings
    return {**{k: spec[k] for k in ("config", "backend", "precision", "device", "resolution", "frames", "features")},
            "deform_attn": spec.get("deform_attn") or "auto",
            "recomputed": pred.features_mode == "recompute", "e2e_s": e2e, "e2e_runs_s": times,
            "fps": pred.num_frames / e2e, "ms_per_frame": 1000 * e2e / pred.num_frames,
            "postprocess_ms_per_frame": 1000 * t.get("postprocess", 0.0) / pred.num_frames,
            "render_ms_per_frame": 1000 * t["render"] / pred.num_frames if "render" in t else None,
            "wall_ms_per_frame": 1000 * statistics.median(walls) / pred.num_frames,  # rendering included
            "stages_s": t,
            "host_peak_mb": host_peak_mb(),
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            "disk_mb": pred.spilled_mb, "tf32": tf32, "repeats": spec["repeats"], "warmup": spec["warmup"]}


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run {spec['frames']} frames {spec['features']} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _previous_postprocess(embed, features, padded, size, orig):
    """The post-processing this replaced (commit d0ed73c): two full-frame F.interpolate, a host copy, pycocotools."""
    import torch.nn.functional as F

    from vita_deploy.pipeline.inference import encode_masks

    logits = torch.einsum("qc,tchw->qthw", embed, features)
    logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)[:, :, :size[0], :size[1]]
    soft = logits.sigmoid()
    hard = soft > 0.5
    numerator, denominator = (soft * hard).flatten(1).sum(1), hard.flatten(1).sum(1)
    masks = (F.interpolate(logits, size=orig, mode="bilinear", align_corners=False) > 0).cpu().numpy()
    return numerator, denominator, [encode_masks(m) for m in masks]


def postprocess_study(args, tmp: Path) -> dict:
    """Post-processing ms per frame, previous vs shipped, on the real model outputs of one clip."""
    from pycocotools import mask as mask_utils

    from vita_deploy.pipeline.inference import eager_graphs, select_topk
    from vita_deploy.loading import load_model
    from vita_deploy.pipeline.postprocess import MaskMaker
    from vita_deploy.pipeline.preprocess import frames_to_tensor, normalize_and_pad, resize_frame, shortest_edge_size
    from vita_deploy.pipeline.video_io import open_video

    device = torch.device(args.device)
    model = load_model(args.checkpoint, args.config).to(device)
    det, vita = eager_graphs(model)
    rows = []
    for res in args.resolution:
        h, w = RESOLUTIONS[res]
        n = args.postprocess_study
        frames = list(open_video(make_benchmark_video(tmp / f"post_{res}_{n}.mp4", n, h, w)))
        size = shortest_edge_size(h, w, model.cfg.input.min_size_test, model.cfg.input.max_size_test)
        with torch.inference_mode():
            feats, queries = [], []
            for i in range(0, n, model.cfg.inference.chunk_size):
                images = normalize_and_pad(frames_to_tensor([resize_frame(f, size) for f in frames[i:i + 18]]),
                                           model.cfg.input).to(device)
                fq, mf = det(images)
                queries.append(fq)
                feats.append(mf)
            padded = tuple(images.shape[-2:])
            features = torch.cat(feats)
            logits, embed = vita(torch.cat(queries))
            _, _, idx = select_topk(logits, model.cfg.inference.topk)
            embed = embed[idx].float().contiguous()
            step = model.cfg.inference.interpolate_chunk_size
            chunks = [features[i:i + step].contiguous() for i in range(0, n, step)]
            maker = MaskMaker(tuple(features.shape[-2:]), padded, size, (h, w), device)
            timing = {}
            outputs = {}
            for name, fn in (("previous", lambda c: _previous_postprocess(embed, c, padded, size, (h, w))),
                             ("shipped", lambda c: maker(embed, c))):
                runs = []
                for rep in range(args.repeats + 1):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    out = [fn(c) for c in chunks]
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if rep:  # the first pass is warm-up
                        runs.append(time.perf_counter() - start)
                timing[name] = 1000 * statistics.median(runs) / n
                outputs[name] = out
        prev = [r for o in outputs["previous"] for r in zip(*o[2])]  # per chunk: per frame tuples of k RLEs
        ship = [r for o in outputs["shipped"] for r in zip(*o.rles)]
        ious = []
        for a, b in zip(prev, ship):
            for ra, rb in zip(a, b):
                if mask_utils.area(ra) or mask_utils.area(rb):
                    ious.append(float(mask_utils.iou([ra], [rb], [0])[0, 0]))
        rows.append({"config": model.cfg.name, "resolution": res, "frames": n, "device": str(device),
                     "previous_ms_per_frame": timing["previous"], "shipped_ms_per_frame": timing["shipped"],
                     "speedup": timing["previous"] / timing["shipped"], "masks_compared": len(ious),
                     "min_iou_previous_vs_shipped": min(ious) if ious else None})
        print(f"post-processing {res} {n} frames: previous {timing['previous']:.2f} ms/frame, shipped "
              f"{timing['shipped']:.2f} ms/frame ({rows[-1]['speedup']:.1f}x), min mask IoU "
              f"{rows[-1]['min_iou_previous_vs_shipped']}", flush=True)
    return {"postprocess": rows}


def write_outputs(out: Path, env: dict, runs: list[dict], not_run: list[dict], post: list[dict]) -> None:
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "runs": runs, "not_run": not_run,
                                                    "postprocess": post}, indent=2))
    lines = ["# Keep vs recompute: memory, disk and time against video length\n",
             f"Machine: {env.get('gpu', env['processor'])}, {env['cpu_count']} CPU cores, {env.get('ram_gib')} GiB RAM, "
             f"torch {env['torch']} ({env['torch_threads']} threads), {env['date']}.  ",
             f"Command: `{env['command']}`\n"]
    if runs:
        lines += ["| config | backend | precision | device | resolution | frames | --features | mode used | fps | "
                  "ms/frame | post ms/frame | render ms/frame | with render ms/frame | host peak MB | GPU peak MB | "
                  "disk MB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in runs:
            gpu = f"{r['gpu_peak_mb']:.0f}" if r["gpu_peak_mb"] is not None else "-"
            rendered = r.get("render_ms_per_frame") is not None
            render = f"{r['render_ms_per_frame']:.1f} | {r['wall_ms_per_frame']:.1f}" if rendered else "- | -"
            lines.append(f"| {r['config']} | {r['backend']} | {r['precision']} | {r['device']} | {r['resolution']} | "
                         f"{r['frames']} | {r['features']} | {'recompute' if r['recomputed'] else 'keep'} | "
                         f"{r['fps']:.2f} | {r['ms_per_frame']:.1f} | {r['postprocess_ms_per_frame']:.2f} | "
                         f"{render} | {r['host_peak_mb']:.0f} | {gpu} | {r['disk_mb']:.0f} |")
        if any(r.get("render_ms_per_frame") is not None for r in runs):
            lines += ["", "With --render: fps and ms/frame leave the rendering out; \"render ms/frame\" is the time "
                      "spent drawing and writing (keep mode: including its second read of the video); \"with render "
                      "ms/frame\" is the wall time of the whole run per frame."]
        lines += [""] + [f"- {c}" for c in comparisons(runs)]
    for s in not_run:
        lines.append(f"\nNot run: {s['resolution']} {s['frames']} frames --features {s['features']}: {s['reason']}.")
    if post:
        lines += ["", "Post-processing per frame (top-k masks, mask scores, RLE), previous vs shipped, same model "
                  "outputs:", "", "| config | device | resolution | frames | previous ms/frame | shipped ms/frame | "
                  "speedup | min mask IoU |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in post:
            iou = f"{p['min_iou_previous_vs_shipped']:.4f}" if p["min_iou_previous_vs_shipped"] is not None else "-"
            lines.append(f"| {p['config']} | {p['device']} | {p['resolution']} | {p['frames']} | "
                         f"{p['previous_ms_per_frame']:.2f} | {p['shipped_ms_per_frame']:.2f} | {p['speedup']:.1f}x | "
                         f"{iou} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if runs:
        plot(runs, out)


def comparisons(runs: list[dict]) -> list[str]:
    """The ratios the targets are stated in, for every group of runs that has them."""
    lines = []
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["config"], r["backend"], r["precision"], r["device"], r["resolution"],
                           r["deform_attn"]), []).append(r)
    for key, rs in groups.items():
        label = " ".join(str(k) for k in key[:5])
        by = {(r["features"], r["frames"]): r for r in rs}
        for f in ("auto", "recompute", "keep"):
            lengths = sorted(n for (ff, n) in by if ff == f)
            if len(lengths) >= 2:
                lo, hi = by[(f, lengths[0])], by[(f, lengths[-1])]
                lines.append(f"{label} --features {f}: peak host memory at {hi['frames']} frames = "
                             f"{hi['host_peak_mb'] / lo['host_peak_mb']:.2f}x the peak at {lo['frames']} "
                             f"({hi['host_peak_mb']:.0f} vs {lo['host_peak_mb']:.0f} MB), disk {hi['disk_mb']:.0f} MB; "
                             f"fps at {hi['frames']} = {100 * hi['fps'] / lo['fps']:.0f} % of fps at {lo['frames']}"
                             + (f"; GPU peak {hi['gpu_peak_mb']:.0f} vs {lo['gpu_peak_mb']:.0f} MB"
                                if hi["gpu_peak_mb"] is not None else ""))
        for (f, n), r in sorted(by.items(), key=lambda kv: kv[0][1]):
            if f == "recompute" and ("keep", n) in by:
                k = by[("keep", n)]
                lines.append(f"{label} {n} frames: recompute {r['ms_per_frame']:.1f} ms/frame = "
                             f"{r['ms_per_frame'] / k['ms_per_frame']:.2f}x keep ({k['ms_per_frame']:.1f} ms/frame); "
                             f"peak host {r['host_peak_mb']:.0f} vs {k['host_peak_mb']:.0f} MB")
    return lines


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for what, ylabel, suffix in (("host_peak_mb", "peak host memory (MB)", "_memory.png"),
                                 ("fps", "end-to-end fps", "_fps.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        series: dict[str, list[tuple[int, float]]] = {}
        for r in runs:
            label = f"{r['config']} {r['backend']} {r['precision']} {r['resolution']} --features {r['features']}"
            series.setdefault(label, []).append((r["frames"], r[what]))
        for label, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("video length (frames)")
        ax.set_ylabel(ylabel)
        if what == "host_peak_mb":
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out.with_name(out.name + suffix), dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--config", default="tiny", choices=config_names(), type=canonical_config_name)
    p.add_argument("--checkpoint", help="weights (default: shipped tiny checkpoint, or random for the zoo)")
    p.add_argument("--backend", default="torch", choices=["torch", "torch-compile", "onnxruntime", "tensorrt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16"],
                   help="eager: fp32 strict, tf32 TF32 matmuls/convolutions, fp16 CUDA autocast (set per run)")
    p.add_argument("--export", help="export dir for onnxruntime / tensorrt (with mask_features.onnx)")
    p.add_argument("--deform-attn", help="deformable-attention implementation for eager runs (default auto)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", nargs="*", type=int, default=[])
    p.add_argument("--resolution", nargs="+", default=["360p"], choices=sorted(RESOLUTIONS))
    p.add_argument("--features", nargs="+", default=["auto"], choices=FEATURE_MODES)
    p.add_argument("--max-keep-frames", type=int, default=1000, help="keep runs longer than this are not run")
    p.add_argument("--max-recompute-frames", type=int, default=10**9,
                   help="with auto also asked for: explicit recompute runs longer than this are not run")
    p.add_argument("--spill-dir", help="allow keep mode to spill features here (default: never disk)")
    p.add_argument("--render", action="store_true", help="also render the annotated mp4 (time reported apart)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--repeats-max-frames", type=int, default=10**9, help="longer runs are timed once")
    p.add_argument("--warmup", type=int, default=0, help="untimed full runs before the timed ones")
    p.add_argument("--warmup-frames", type=int, default=36, help="one untimed run on the first N frames (0: none)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--postprocess-study", type=int, metavar="FRAMES", help="post-processing per frame, previous vs "
                                                                         "shipped, on a clip of FRAMES frames")
    p.add_argument("--out", default="benchmarks/results/streaming")
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    runs, not_run, post = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.postprocess_study:
            post = postprocess_study(args, Path(tmp))["postprocess"]
        for res in args.resolution:
            h, w = RESOLUTIONS[res]
            for n in sorted(args.frames):
                clip = Path(tmp) / f"{res}_{n}.mp4"
                for f in args.features:
                    if f == "keep" and n > args.max_keep_frames:
                        not_run.append({"resolution": res, "frames": n, "features": f, "reason":
                                        f"longer than --max-keep-frames {args.max_keep_frames} (kept features grow "
                                        "linearly with the length; see the recompute and auto rows)"})
                        continue
                    if f == "recompute" and "auto" in args.features and n > args.max_recompute_frames:
                        not_run.append({"resolution": res, "frames": n, "features": f, "reason":
                                        f"longer than --max-recompute-frames {args.max_recompute_frames}: the auto "
                                        "row measures this length (its 'mode used' says whether it recomputed)"})
                        continue
                    if not clip.exists():
                        make_benchmark_video(clip, n, h, w)
                    spec = {"config": args.config, "checkpoint": args.checkpoint, "backend": args.backend,
                            "precision": args.precision, "export": args.export, "deform_attn": args.deform_attn,
                            "device": args.device, "resolution": res, "frames": n, "features": f,
                            "clip": str(clip), "repeats": args.repeats if n <= args.repeats_max_frames else 1,
                            "warmup": args.warmup,
                            "warmup_frames": args.warmup_frames,
                            "threads": args.threads, "spill_dir": args.spill_dir, "render": args.render}
                    r = run_child(spec)
                    runs.append(r)
                    print(f"{args.config} {args.backend} {args.precision} {res} {n} frames --features {f} "
                          f"({'recompute' if r['recomputed'] else 'keep'}): {r['fps']:.2f} fps, "
                          f"{r['ms_per_frame']:.1f} ms/frame, post {r['postprocess_ms_per_frame']:.2f} ms/frame, host "
                          f"peak {r['host_peak_mb']:.0f} MB" + (f", GPU peak {r['gpu_peak_mb']:.0f} MB"
                                                              if r["gpu_peak_mb"] is not None else "")
                          + f", disk {r['disk_mb']:.0f} MB"
                          + (f", render {r['render_ms_per_frame']:.1f} ms/frame ({r['wall_ms_per_frame']:.1f} ms/frame "
                             "with it)" if r["render_ms_per_frame"] is not None else ""), flush=True)
                    write_outputs(out, env, runs, not_run, post)  # partial results survive an interruption
                with contextlib.suppress(OSError):
                    clip.unlink()
        write_outputs(out, env, runs, not_run, post)
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
