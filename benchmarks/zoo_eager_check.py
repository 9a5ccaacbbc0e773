"""Eager frame latency of zoo configs on this machine, and how far the eager model's own outputs move when only
the summation order changes (1 vs 2 threads) or the precision does (fp32 vs fp64).

    python benchmarks/zoo_eager_check.py --configs r50-ytvis19 r101-ytvis19 swinl-ytvis19 \\
        --out benchmarks/results/zoo_eager_cpu

Why: Mask2Former's masked attention blocks a pixel where sigmoid(mask logit) < 0.5, a hard threshold, so a
rounding-level change of one logit near 0 flips an attention-mask bit and moves the frame queries by far more
than the rounding (mask features, computed before any threshold, move by rounding only). The ONNX Runtime vs
eager parity of a deep backbone's frame queries (benchmarks/results/zoo_cpu.md) is to be read against these
figures. Random seeded weights; one 16:9 720p frame at the config's test size. Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.commands import cli  # noqa: E402
from vita_deploy.benchmark import environment, write_rows  # noqa: E402
from vita_deploy.config import canonical_config_name, config_names, get_config  # noqa: E402
from vita_deploy.modeling.model import build_model  # noqa: E402
from vita_deploy.pipeline.preprocess import padded_size, shortest_edge_size  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (both as float64)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def measure(name: str, repeats: int) -> dict:
    cfg = get_config(name)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    h, w = padded_size(*shortest_edge_size(720, 1280, cfg.input.min_size_test, cfg.input.max_size_test))
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.set_num_threads(2)
        fq2, mf2 = model.frame_detector(x)  # warm-up and reference
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.frame_detector(x)
            times.append(time.perf_counter() - t0)
        torch.set_num_threads(1)
        fq1, mf1 = model.frame_detector(x)
        torch.set_num_threads(2)
        fq64, mf64 = model.double().frame_detector(x.double())
    return {"config": name, "frame": f"{h}x{w}", "eager_frame_ms": statistics.median(times) * 1000,
            "repeats": repeats, "threads": 2,
            "threads_1_vs_2": {"frame_queries": rel(fq1, fq2), "mask_features": rel(mf1, mf2)},
            "fp32_vs_fp64": {"frame_queries": rel(fq2, fq64), "mask_features": rel(mf2, mf64)}}


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"Machine: {env['processor']}, {env['cpu_count']} cores, {env['platform']}; torch {env['torch']}; "
             f"{env['date']}; command: `{env['command']}`", "",
             "| config | frame | eager frame (2 threads, median) | 1 vs 2 threads: frame queries / mask features "
             "| fp32 vs fp64: frame queries / mask features |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        t, d = r["threads_1_vs_2"], r["fp32_vs_fp64"]
        lines.append(f"| {r['config']} | {r['frame']} | {r['eager_frame_ms']:.0f} ms | {t['frame_queries']:.1e} / "
                     f"{t['mask_features']:.1e} | {d['frame_queries']:.1e} / {d['mask_features']:.1e} |")
    return "\n".join(lines) + "\n"


@cli.command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["r50-ytvis19", "r101-ytvis19", "swinl-ytvis19"],
                   choices=config_names(), type=canonical_config_name)
    p.add_argument("--repeats", type=cli.positive_int, default=3)
    p.add_argument("--out", type=cli.output_file, required=True, help="writes OUT.json and OUT.md")
    a = p.parse_args(argv)
    env = environment(None if argv is None else ["benchmarks/zoo_eager_check.py", *argv])
    rows = [measure(name, a.repeats) for name in a.configs]
    write_rows(Path(a.out), env, rows, markdown(rows, env))
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
