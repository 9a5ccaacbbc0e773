"""INT8 / FP8 quantization: accuracy on the synthetic val set and CPU speed of the frame detector.

    python benchmarks/bench_quant.py --work /tmp/qbench --config tiny --parts accuracy speed
    python benchmarks/bench_quant.py --work /tmp/qbench --config r50 --parts speed
    python benchmarks/bench_quant.py --work /tmp/qbench --config r50 --parts accuracy --num-videos 3 \
        --calib-frames 16 --no-sensitivity --chunk-size 4

accuracy: `vita-deploy export --deform-attn native --precision fp32|int8|fp8 --sensitivity` (tiny: the shipped
    checkpoint, default synthetic calibration; r50: random weights, calibrated on 8 synthetic videos of seed 1),
    each verified with `vita-deploy verify --videos <synthetic val videos, seed 0>` (AP of export vs eager, matched
    mask IoU, frame-query cosine); int8 twice: the CPU twin ONNX Runtime runs (--int8-graph auto) and the S8S8 graph
    TensorRT builds, emulated (--int8-graph tensorrt). fp8 runs as fake-quantized fp32 (no CPU FP8 kernels).
speed: the frame detector exported at a fixed 360p canvas (r50 384x640, tiny 160x288), batch 1, fp32 and int8:
    fp32 vs the int8 export's S8S8 graph and its U8S8 CPU twin (same calibration). Median of --repeats runs after
    --warmup, --threads intra-op threads; one profiled run per graph lists the kernels ONNX Runtime ran.
Writes OUT.json and OUT.md (default benchmarks/results/quant_cpu).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.benchmark import median_ms  # noqa: E402
from vita_deploy.commands import cli  # noqa: E402


GEMM_OPS = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul")  # what INT8 can replace (fp32 kernels)


def _kernels(path: Path, options, feeds: dict, tmp: Path) -> dict[str, float]:
    """{op type: ms in one profiled run}, largest first (ONNX Runtime's per-node kernel times)."""
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
    return {op: round(d / 1000, 1) for op, d in per_op.most_common()}


def val_data(work: Path) -> Path:
    """The 40 synthetic val videos of the shipped checkpoint's model card (seed 0)."""
    from vita_deploy.commands import data as data_command

    data = work / "synthetic_val"
    if not (data / "valid.json").is_file():
        assert data_command.main(["--out", str(data), "--videos", "1", "--val-videos", "40", "--seed", "0"]) == 0
    return data


def calib_data(work: Path) -> Path:
    """Calibration videos kept apart from the evaluated ones: 8 synthetic val videos of another seed (1)."""
    from vita_deploy.commands import data as data_command

    data = work / "synthetic_calib"
    if not (data / "valid.json").is_file():
        assert data_command.main(["--out", str(data), "--videos", "1", "--val-videos", "8", "--seed", "1"]) == 0
    return data / "valid"


def _export(out: Path, config: str, precision: str, extra: list[str]) -> None:
    from vita_deploy.commands.export import main as export_main

    if not (out / "manifest.json").is_file():
        t0 = time.perf_counter()
        assert export_main(["--config", config, "--out-dir", str(out), "--deform-attn", "native", "--precision",
                            precision, *extra]) == 0
        print(f"export {out.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def accuracy(work: Path, config: str, num_videos: int, calib_frames: int, sensitivity: bool = True,
             chunk_size: int | None = None) -> list[dict]:
    """fp32 / int8 (the CPU twin ONNX Runtime runs, and the S8S8 graph TensorRT builds, emulated) / fp8 exports of
    `config` verified on the synthetic val videos: AP of export vs eager, matched mask IoU, frame-query cosine.
    tiny: the shipped checkpoint; r50: random weights (seed 0), so AP means nothing and IoU / cosine are the figures."""
    from vita_deploy.commands import verify

    data = val_data(work)
    rows = []
    for precision, int8_graph in (("fp32", "auto"), ("int8", "auto"), ("int8", "tensorrt"), ("fp8", "auto")):
        out = work / f"{config}_{precision}"
        extra = ["--max-frames", "64"]
        if precision != "fp32":
            extra += ["--calib-frames", str(calib_frames)] + (["--sensitivity"] if sensitivity else [])
            if config != "tiny":
                extra += ["--calib", str(calib_data(work))]
        _export(out, config, precision, extra)
        report = work / f"verify_{config}_{precision}_{int8_graph}.json"
        report.unlink(missing_ok=True)
        rc = verify.main(["--export", str(out), "--backend", "onnxruntime", "--videos", str(data), "--num-videos",
                          str(num_videos), "--device", "cpu", "--int8-graph", int8_graph, "--report", str(report)]
                         + (["--chunk-size", str(chunk_size)] if chunk_size else []))
        r = json.loads(report.read_text())
        v = r["video"]
        fq = [t["cosine"] for k, t in r["tensors"].items() if "frame_queries" in k]
        q = json.loads((out / "manifest.json").read_text()).get("quantization") or {}
        graph = {"fp32": "fp32", "fp8": "fp8 Q/DQ (ORT: fake-quantized fp32)"}.get(precision) or (
            "int8 CPU twin (U8S8, ORT QLinearConv)" if int8_graph == "auto" else "int8 S8S8 Q/DQ (TensorRT graph, "
            "ORT-emulated)")
        rows.append({"part": "accuracy", "config": config + (" (shipped checkpoint)" if config == "tiny" else
                                                            " (random weights)"),
                     "precision": precision, "graph": graph, "videos": v["videos"], "instances": v["instances"],
                     "ap_eager": v.get("ap_eager"), "ap_export": v.get("ap_backend"), "delta_ap": v.get("delta_ap"),
                     "mean_matched_iou": v["mean_matched_iou"], "min_matched_iou": v["min_matched_iou"],
                     "frame_query_cosine_random_inputs": min(fq), "kept_fp32_blocks": q.get("kept_fp32_blocks"),
                     "calibration": f"{q.get('calib_frames')} frames of {q.get('calib_source')}" if q else None,
                     "verify_rc": rc})
        print(rows[-1], file=sys.stderr)
    return rows


def speed(work: Path, threads: int, repeats: int, warmup: int, calib_frames: int, config: str = "r50"
          ) -> list[dict]:
    """The frame detector at a fixed 360p canvas, batch 1: fp32 vs the int8 export's two graphs (the CPU twin and
    the S8S8 TensorRT graph), ONNX Runtime CPU, with the kernels each ran."""
    import onnxruntime as ort

    from vita_deploy.export.quantize import _cosine, ort_session_options

    size = (384, 640) if config == "r50" else (160, 288)  # a 360p frame after the config's resize, padded
    fixed = ["--height", str(size[0]), "--width", str(size[1]), "--max-batch", "1", "--graphs", "frame_detector"]
    calib = [] if config == "tiny" else ["--calib", str(calib_data(work))]
    _export(work / f"{config}_fp32_speed", config, "fp32", fixed)
    _export(work / f"{config}_int8_speed", config, "int8", fixed + calib + ["--calib-frames", str(calib_frames)])
    q = work / f"{config}_int8_speed"
    images = np.load(q / "calibration.npz")["images"]
    variants = {"fp32": work / f"{config}_fp32_speed" / "frame_detector.onnx",
                "int8 S8S8 Q/DQ (ModelOpt, the TensorRT graph)": q / "frame_detector.onnx",
                "int8 U8S8 Q/DQ (the CPU twin, ORT's quantizer)": q / "frame_detector.cpu_int8.onnx"}
    feeds = {"images": images[:1]}
    ref = None
    rows = []
    for name, path in variants.items():
        so = ort_session_options("fp32", threads)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        outs = [sess.run(None, {"images": images[i: i + 1]}) for i in range(len(images))]
        fq = np.concatenate([o[0] for o in outs])
        ref = fq if ref is None else ref
        ms = median_ms(lambda: sess.run(None, feeds), repeats, warmup)
        rows.append({"part": "speed", "graph": f"{config} frame detector 1x3x{size[0]}x{size[1]}", "variant": name,
                     "threads": threads, "median_ms": round(ms, 1), "frame_query_cosine_vs_fp32": _cosine(fq, ref),
                     "kernel_ms": _kernels(path, ort_session_options("fp32", threads), feeds, work),
                     "calibration": f"{len(images)} frames"})
        print(rows[-1], file=sys.stderr)
    base = rows[0]["median_ms"]
    for r in rows:
        r["speedup_vs_fp32"] = round(base / r["median_ms"], 2)
    # Amdahl: the fp32 run's time outside Conv / Gemm / MatMul kernels stays whatever INT8 does to those
    k = rows[0]["kernel_ms"]
    gemm, total = sum(v for op, v in k.items() if op in GEMM_OPS), sum(k.values())
    rows[0]["gemm_share"] = round(gemm / total, 3)
    rows[0]["ceiling_speedup_free_gemms"] = round(total / (total - gemm), 2)
    return rows


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"# INT8 / FP8 quantization ({env['processor']}, {env['date']})", "", f"`{env['command']}`", ""]
    acc = [r for r in rows if r["part"] == "accuracy"]
    if acc:
        lines += ["| config | graph | videos | AP eager | AP export | dAP | mean / min matched mask IoU | "
                  "frame-query cosine (random inputs) | kept fp32 by sensitivity | verify |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in acc:
            kept = r["kept_fp32_blocks"]
            ap = ("| - | - | - |" if r["ap_eager"] is None else
                  f"| {r['ap_eager']:.2f} | {r['ap_export']:.2f} | {r['delta_ap']:+.2f} |")
            lines.append(f"| {r['config']} | {r['graph']} | {r['videos']} {ap} {r['mean_matched_iou']:.4f} / "
                         f"{r['min_matched_iou']:.4f} | {r['frame_query_cosine_random_inputs']:.5f} | "
                         f"{'-' if kept is None else ', '.join(kept) or 'none'} | "
                         f"{'pass' if r['verify_rc'] == 0 else 'FAIL'} |")
    sp = [r for r in rows if r["part"] == "speed"]
    if sp:
        lines += ["", "| graph | variant | threads | median ms | speed-up vs fp32 | frame-query cosine vs fp32 | "
                  "kernel ms in one profiled run (top 6) |", "|---|---|---|---|---|---|---|"]
        for r in sp:
            k = ", ".join(f"{op} {ms:.3g}" for op, ms in list(r["kernel_ms"].items())[:6])
            lines.append(f"| {r['graph']} | {r['variant']} | {r['threads']} | {r['median_ms']} | "
                         f"{r['speedup_vs_fp32']}x | {r['frame_query_cosine_vs_fp32']:.5f} | {k} |")
        r = sp[0]
        lines += ["", f"fp32: Conv / Gemm / MatMul kernels are {r['gemm_share']:.0%} of the node time, so INT8 cannot "
                  f"make this graph faster than {r['ceiling_speedup_free_gemms']}x on this runtime even if those "
                  "kernels took no time (the rest: deformable-attention sampling as Gather / Mul / Add, LayerNorm, "
                  "mask einsums, stays fp32)."]
    return "\n".join(lines) + "\n"


@cli.command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the exports and data (reused when present)")
    p.add_argument("--parts", nargs="+", choices=["accuracy", "speed"], default=["accuracy", "speed"])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/quant_cpu"))
    p.add_argument("--num-videos", type=cli.positive_int, default=40)
    p.add_argument("--calib-frames", type=cli.positive_int, default=16)
    p.add_argument("--config", choices=["r50", "tiny"], default="tiny",
                   help="model of --parts accuracy and speed (tiny: the shipped checkpoint; r50: random weights, "
                        "calibrated on synthetic videos of another seed)")
    p.add_argument("--sensitivity", action=argparse.BooleanOptionalAction, default=True,
                   help="accuracy: export int8/fp8 with --sensitivity (one quantization per block; minutes for r50)")
    p.add_argument("--chunk-size", type=cli.positive_int,
                   help="accuracy: verify --chunk-size (r50 at the config's 18 frames needs > 24 GiB on the CPU)")
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
        rows += accuracy(a.work, a.config, a.num_videos, a.calib_frames, a.sensitivity, a.chunk_size)
    if "speed" in a.parts:
        rows += speed(a.work, a.threads, a.repeats, a.warmup, a.calib_frames, a.config)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(a.out, env, rows, markdown(rows, env))
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
