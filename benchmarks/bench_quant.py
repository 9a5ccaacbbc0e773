"""INT8 / FP8 quantization: accuracy of tiny on the synthetic val set and CPU speed of the r50 detector.

    python benchmarks/bench_quant.py --work /tmp/qbench --parts accuracy speed

accuracy: the shipped tiny checkpoint exported `native` in fp32 / int8 / fp8 (ModelOpt, default synthetic
    calibration), each verified with `python -m vita_deploy.commands.verify --videos <40 synthetic val videos>` (AP of the
    export vs eager, matched mask IoU). fp8 runs in ONNX Runtime with session.disable_quant_qdq (no CPU FP8 kernels).
speed: the r50 frame detector (random weights; speed does not depend on them) exported at a fixed 384x640 (a
    360p frame padded), batch 1, then quantized two ways with the same calibration frames: ModelOpt's S8S8 Q/DQ
    graph (what TensorRT builds) and ONNX Runtime's own static quantizer with unsigned activations and signed
    per-channel weights (U8S8 Q/DQ, `vita_deploy.export.quantize.ort_cpu_variant`). Median of --repeats runs after
    --warmup, --threads intra-op threads; one profiled run per graph lists the kernels ONNX Runtime ran.
Writes OUT.json and OUT.md (default benchmarks/results/quant_cpu).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.commands import cli  # noqa: E402


def _median_ms(sess, feeds: dict, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _kernels(path: Path, options, feeds: dict, tmp: Path) -> list[tuple[str, float]]:
    """(op type / kernel, share of node time) of one profiled run, largest first."""
    import onnxruntime as ort

    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / path.stem)
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return [(op, round(d / total, 3)) for op, d in per_op.most_common(8)]


def val_data(work: Path) -> Path:
    """The 40 synthetic val videos of the shipped checkpoint's model card (seed 0)."""
    from vita_deploy.data import synthetic

    data = work / "synthetic_val"
    if not (data / "valid.json").is_file():
        assert synthetic.main(["--out", str(data), "--videos", "1", "--val-videos", "40", "--seed", "0"]) == 0
    return data


def accuracy(work: Path, num_videos: int, calib_frames: int) -> list[dict]:
    from vita_deploy.commands import verify
    from vita_deploy.commands.export import main as export_main

    data = val_data(work)
    rows = []
    for precision in ("fp32", "int8", "fp8"):
        out = work / f"tiny_{precision}"
        if not (out / "manifest.json").is_file():
            t0 = time.perf_counter()
            args = ["--config", "tiny", "--out-dir", str(out), "--deform-attn", "native", "--precision", precision,
                    "--max-frames", "64"]
            assert export_main(args + (["--calib-frames", str(calib_frames), "--sensitivity"]
                                       if precision != "fp32" else [])) == 0
            print(f"export {precision}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        report = work / f"verify_{precision}.json"
        report.unlink(missing_ok=True)
        rc = verify.main(["--export", str(out), "--backend", "onnxruntime", "--videos", str(data), "--num-videos",
                          str(num_videos), "--device", "cpu", "--report", str(report)])
        r = json.loads(report.read_text())
        v = r["video"]
        fq = [t["cosine"] for k, t in r["tensors"].items() if "frame_queries" in k]
        rows.append({"part": "accuracy", "config": "tiny (shipped checkpoint)", "precision": precision,
                     "videos": v["videos"], "ap_eager": v.get("ap_eager"), "ap_export": v.get("ap_backend"),
                     "delta_ap": v.get("delta_ap"), "mean_matched_iou": v["mean_matched_iou"],
                     "min_matched_iou": v["min_matched_iou"], "frame_query_cosine_random_inputs": min(fq),
                     "verify_rc": rc})
        print(rows[-1], file=sys.stderr)
    return rows


def speed(work: Path, threads: int, repeats: int, warmup: int, calib_frames: int, config: str = "r50"
          ) -> list[dict]:
    import onnx
    import onnxruntime as ort

    from vita_deploy.config import get_config
    from vita_deploy.commands.export import main as export_main
    from vita_deploy.export.quantize import (QuantOptions, _cosine, calibration_images, ort_cpu_variant,
                                             ort_session_options, placement, quantize_graph, sample_frames)

    cfg = get_config(config)
    size = (384, 640) if config == "r50" else (160, 288)  # a 360p frame after the config's resize, padded
    fp32 = work / f"{config}_fp32_speed"
    if not (fp32 / "manifest.json").is_file():
        t0 = time.perf_counter()
        assert export_main(["--config", config, "--out-dir", str(fp32), "--deform-attn", "native", "--height",
                            str(size[0]), "--width", str(size[1]), "--max-batch", "1", "--graphs",
                            "frame_detector"]) == 0
        print(f"{config} export: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    src = fp32 / "frame_detector.onnx"
    frames, source = sample_frames([val_data(work)], cfg, calib_frames)
    images = calibration_images(frames, cfg, size)
    variants = {"fp32": src, "int8 S8S8 (ModelOpt, TensorRT format)": work / f"{config}_int8_modelopt.onnx",
                "int8 U8S8 (ONNX Runtime quantizer, CPU format)": work / f"{config}_int8_ort_u8s8.onnx"}
    model = onnx.load(str(src))
    place = placement(model)
    if not variants["int8 S8S8 (ModelOpt, TensorRT format)"].is_file():
        quantize_graph(src, variants["int8 S8S8 (ModelOpt, TensorRT format)"], images, QuantOptions("int8"), place)
    if not variants["int8 U8S8 (ONNX Runtime quantizer, CPU format)"].is_file():
        ort_cpu_variant(src, variants["int8 U8S8 (ONNX Runtime quantizer, CPU format)"], images, place)
    feeds = {"images": images[:1]}
    ref = None
    rows = []
    for name, path in variants.items():
        so = ort_session_options("int8" if "int8" in name else "fp32", threads)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        outs = [sess.run(None, {"images": images[i: i + 1]}) for i in range(len(images))]
        fq = np.concatenate([o[0] for o in outs])
        ref = fq if ref is None else ref
        ms = _median_ms(sess, feeds, repeats, warmup)
        rows.append({"part": "speed", "graph": f"{config} frame detector 1x3x{size[0]}x{size[1]}", "variant": name,
                     "threads": threads,
                     "median_ms": round(ms, 1), "frame_query_cosine_vs_fp32": _cosine(fq, ref),
                     "kernels": _kernels(path, ort_session_options("int8", threads), feeds, work),
                     "calibration": f"{len(images)} frames of {source}"})
        print(rows[-1], file=sys.stderr)
    base = rows[0]["median_ms"]
    for r in rows:
        r["speedup_vs_fp32"] = round(base / r["median_ms"], 2)
    return rows


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"# INT8 / FP8 quantization ({env['processor']}, {env['date']})", "", f"`{env['command']}`", ""]
    acc = [r for r in rows if r["part"] == "accuracy"]
    if acc:
        lines += ["| config | precision | videos | AP eager | AP export | dAP | mean / min matched mask IoU | "
                  "frame-query cosine (random inputs) | verify |", "|---|---|---|---|---|---|---|---|---|"]
        for r in acc:
            lines.append(f"| {r['config']} | {r['precision']} | {r['videos']} | {r['ap_eager']:.2f} | "
                         f"{r['ap_export']:.2f} | {r['delta_ap']:+.2f} | {r['mean_matched_iou']:.4f} / "
                         f"{r['min_matched_iou']:.4f} | {r['frame_query_cosine_random_inputs']:.5f} | "
                         f"{'pass' if r['verify_rc'] == 0 else 'FAIL'} |")
    sp = [r for r in rows if r["part"] == "speed"]
    if sp:
        lines += ["", "| graph | variant | threads | median ms | speed-up vs fp32 | frame-query cosine vs fp32 | "
                  "top kernels (share of node time) |", "|---|---|---|---|---|---|---|"]
        for r in sp:
            k = ", ".join(f"{op} {s:.0%}" for op, s in r["kernels"][:4])
            lines.append(f"| {r['graph']} | {r['variant']} | {r['threads']} | {r['median_ms']} | "
                         f"{r['speedup_vs_fp32']}x | {r['frame_query_cosine_vs_fp32']:.5f} | {k} |")
    return "\n".join(lines) + "\n"


@cli.command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the exports and data (reused when present)")
    p.add_argument("--parts", nargs="+", choices=["accuracy", "speed"], default=["accuracy", "speed"])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/quant_cpu"))
    p.add_argument("--num-videos", type=cli.positive_int, default=40)
    p.add_argument("--calib-frames", type=cli.positive_int, default=16)
    p.add_argument("--speed-config", choices=["r50", "tiny"], default="r50", help="detector timed by --parts speed")
    p.add_argument("--threads", type=cli.positive_int, default=2)
    p.add_argument("--repeats", type=cli.positive_int, default=5)
    p.add_argument("--warmup", type=cli.nonnegative_int, default=2)
    a = p.parse_args(argv)
    import torch

    from vita_deploy.benchmark import environment, write_rows

    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    rows = []
    if "accuracy" in a.parts:
        rows += accuracy(a.work, a.num_videos, a.calib_frames)
    if "speed" in a.parts:
        rows += speed(a.work, a.threads, a.repeats, a.warmup, a.calib_frames, a.speed_config)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(a.out, env, rows, markdown(rows, env))
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
