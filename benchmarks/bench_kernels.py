"""Multi-scale deformable attention implementations side by side at the pixel decoder's real shapes.

    python benchmarks/bench_kernels.py [--device cpu|cuda] [--frames 1 6 18] [--out benchmarks/results/kernels_cpu]

Shapes: 360x640 frames padded to 384x640 give levels 12x20, 24x40, 48x80 (S = Lq = 5040) for r50 (8 heads,
32 channels, 4 points); the issue's NVIDIA figures use 360x640 unpadded (45x80, 23x40, 12x20, S = 4760).
For each implementation and precision: median time of repeated runs after warm-up (CUDA events on the GPU),
achieved bandwidth (bytes that must move at least once: value, locations, weights, output), the share of the
memory-bandwidth floor (against --peak-gbps, or else the bandwidth of a large tensor copy measured on the device
at the start of the run), and the relative error against a float64 reference
(max |out - ref| / max |ref|), and for fp16 also against the exact computation on the fp16-rounded inputs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy import cli  # noqa: E402
from vita_deploy.benchmark import environment  # noqa: E402
from vita_deploy.modeling.ms_deform_attn import ms_deform_attn, ms_deform_attn_gather  # noqa: E402

SHAPES = {"360x640 (padded 384x640)": [(48, 80), (24, 40), (12, 20)], "360x640 (NVIDIA's)": [(45, 80), (23, 40), (12, 20)]}


def make_inputs(n: int, shapes, heads: int = 8, channels: int = 32, points: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, heads, channels, generator=g)
    locations = torch.rand(n, s, heads, len(shapes), points, 2, generator=g)
    weights = torch.rand(n, s, heads, len(shapes), points, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, locations, weights


def run(impl: str, value, shapes, locations, weights):
    if impl == "reference (grid_sample)":
        return ms_deform_attn(value, torch.tensor(shapes), None, locations.to(value.dtype), weights.to(value.dtype))
    return ms_deform_attn_gather(value, shapes, locations, weights)


def time_it(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth_gbps(device: torch.device, mib: int = 512, repeats: int = 5) -> float:
    """Achievable memory bandwidth: bytes read + written per second by `dst.copy_(src)` of `mib` MiB (median)."""
    src = torch.ones(mib * 2**18, device=device)  # float32: 2**18 per MiB
    dst = torch.empty_like(src)
    seconds = time_it(lambda: dst.copy_(src), device, repeats, warmup=1)
    return 2 * src.numel() * 4 / seconds / 1e9


@cli.command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=cli.device, default=cli.default_device())
    p.add_argument("--frames", nargs="+", type=cli.positive_int, default=[1, 6, 18])
    p.add_argument("--precision", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    p.add_argument("--shapes", default="360x640 (NVIDIA's)", choices=sorted(SHAPES))
    p.add_argument("--repeats", type=cli.positive_int, default=5)
    p.add_argument("--warmup", type=cli.nonnegative_int, default=2)
    p.add_argument("--peak-gbps", type=cli.positive_float,
                   help="memory bandwidth of the device for the %% of floor column (default: a measured tensor copy)")
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=cli.output_file, default="benchmarks/results/kernels")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    shapes = SHAPES[a.shapes]
    peak_source = "given (--peak-gbps)" if a.peak_gbps else "measured: 512 MiB tensor copy, read + write"
    peak_gbps = a.peak_gbps or copy_bandwidth_gbps(device)
    print(f"memory bandwidth {peak_gbps:.1f} GB/s ({peak_source})", flush=True)
    rows = []
    for n in a.frames:
        value, locations, weights = make_inputs(n, shapes)
        ref64 = ms_deform_attn(value.double(), torch.tensor(shapes), None, locations.double(), weights.double())
        for precision in a.precision:
            dtype = torch.float16 if precision == "fp16" else torch.float32
            if device.type == "cpu" and dtype == torch.float16:
                continue  # no fp16 grid_sample / fast fp16 math on the CPU: not a meaningful measurement
            v, loc, w = value.to(device, dtype), locations.to(device), weights.to(device, dtype)
            exact_rounded = ms_deform_attn(v.double().cpu(), torch.tensor(shapes), None, loc.double().cpu(),
                                           w.double().cpu())
            moved = v.numel() * v.element_size() + loc.numel() * 4 + w.numel() * w.element_size() + \
                n * value.shape[1] * 8 * 32 * v.element_size()
            for impl in ("reference (grid_sample)", "native (Gather)"):
                with torch.inference_mode():
                    out = run(impl, v, shapes, loc, w)
                    seconds = time_it(lambda: run(impl, v, shapes, loc, w), device, a.repeats, a.warmup)
                out64 = out.double().cpu()
                row = {"frames": n, "precision": precision, "implementation": impl, "median_ms": seconds * 1000,
                       "gbps": moved / seconds / 1e9,
                       "rel_err_vs_fp64": ((out64 - ref64).abs().max() / ref64.abs().max()).item(),
                       "rel_err_vs_exact_on_rounded_inputs": ((out64 - exact_rounded).abs().max()
                                                              / exact_rounded.abs().max()).item()}
                row["pct_of_floor"] = 100 * row["gbps"] / peak_gbps  # = floor time (bytes / peak) / time
                rows.append(row)
                print(f"N={n:2d} {precision} {impl:24s} {row['median_ms']:9.2f} ms  {row['gbps']:7.2f} GB/s  "
                      f"{row['pct_of_floor']:5.1f} % of floor  rel err {row['rel_err_vs_fp64']:.1e}", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "shapes": shapes, "peak_gbps": peak_gbps,
                                                    "peak_gbps_source": peak_source, "rows": rows}, indent=2))
    lines = [f"# Deformable attention, {a.shapes}, 8 heads x 32 channels, 4 points, device {device}\n",
             f"Machine: {env.get('gpu', env['processor'])}, {env['cpu_count']} CPU cores, torch {env['torch']} "
             f"({env['torch_threads']} threads), {env['date']}. Memory bandwidth {peak_gbps:.1f} GB/s ({peak_source}); "
             "% of floor = (bytes that must move / bandwidth) / time.  ",
             f"Command: `{env['command']}`\n",
             "| N | precision | implementation | median ms | GB/s | % of floor | rel err vs fp64 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['frames']} | {r['precision']} | {r['implementation']} | {r['median_ms']:.2f} | {r['gbps']:.2f} | "
              f"{r['pct_of_floor']:.2f} | {r['rel_err_vs_fp64']:.1e} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
