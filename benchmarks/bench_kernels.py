"""Multi-scale deformable attention implementations side by side at the pixel decoder's real shapes.

    python benchmarks/bench_kernels.py [--device cpu|cuda] [--frames 1 6 18] [--out benchmarks/results/kernels_cpu]

Shapes: 360x640 frames padded to 384x640 give levels 12x20, 24x40, 48x80 (S = Lq = 5040) for r50 (8 heads,
32 channels, 4 points); the issue's NVIDIA figures use 360x640 unpadded (45x80, 23x40, 12x20, S = 4760).
For each implementation and precision: median time of repeated runs after warm-up (CUDA events on the GPU),
achieved bandwidth (bytes that must move at least once: value, locations, weights, output), the share of the
memory-bandwidth floor (against --peak-gbps, or else the bandwidth of a large tensor copy measured on the device
at the start of the run), and the relative error against a float64 reference
(max |out - ref| / max |ref|), and for fp16 also against the exact computation on the fp16-rounded inputs.

Implementations: grid_sample (the reference), the Gather form (the `native` export) and, where triton is installed,
our Triton kernel (`vita_deploy.kernels`, the `vita-plugin` TensorRT plugin's kernel). On the GPU the L2 cache is
flushed (a 256 MiB write) before every timed run, so each run reads its inputs from memory as in the model. On the
CPU the Triton kernel runs only in Triton's interpreter, at a small shape, as a correctness run: its errors are
reported in their own table and it has no time (the interpreter is not a speed measurement).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.commands import cli  # noqa: E402
from vita_deploy.benchmark import environment  # noqa: E402
from vita_deploy.files import atomic_write_text  # noqa: E402
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


H200_PEAK_GBPS = 4800.0  # HBM3e, NVIDIA's datasheet
IMPLEMENTATIONS = ("reference (grid_sample)", "native (Gather)", "triton (ours)")
SMALL_SHAPES = [(6, 10), (3, 5), (2, 3)]  # the interpreter's correctness run on the CPU


def prepare(impl: str, value, shapes, locations, weights):
    """A zero-argument callable running `impl` on these inputs. Everything it needs besides the kernel itself (the
    level-shape tensor, the level starts, the dtype casts) is built here, once, outside the timed region: on the GPU
    building them per call is a blocking host-to-device copy plus a cumsum, which would be timed as the kernel's."""
    if impl == "reference (grid_sample)":
        levels = [tuple(hw) for hw in shapes]  # a list, not a device tensor: no .tolist() sync per call
        loc, w = locations.to(value.dtype), weights.to(value.dtype)
        return lambda: ms_deform_attn(value, levels, None, loc, w)
    if impl == "triton (ours)":
        from vita_deploy.kernels import ms_deform_attn_triton

        spatial = torch.tensor(shapes, dtype=torch.int32, device=value.device)
        starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]]).to(torch.int32)
        return lambda: ms_deform_attn_triton(value, spatial, starts, locations, weights)
    if impl == "native (Gather)":
        return lambda: ms_deform_attn_gather(value, shapes, locations, weights)
    raise ValueError(f"unknown implementation {impl!r}")


def run(impl: str, value, shapes, locations, weights):
    return prepare(impl, value, shapes, locations, weights)()


def bytes_moved(value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor, queries: int) -> int:
    """Bytes that must move at least once: value, locations (fp32), weights, and the (N, Lq, heads * channels)
    output in value's dtype. (N, S, heads, channels) value; (N, Lq, heads, levels, points, 2) locations."""
    n, _, heads, channels = value.shape
    return (value.numel() * value.element_size() + locations.numel() * locations.element_size()
            + weights.numel() * weights.element_size() + n * queries * heads * channels * value.element_size())


def rel_errors(out: torch.Tensor, ref64: torch.Tensor, exact_rounded: torch.Tensor) -> dict:
    out64 = out.double().cpu()
    return {"rel_err_vs_fp64": ((out64 - ref64).abs().max() / ref64.abs().max()).item(),
            "rel_err_vs_exact_on_rounded_inputs": ((out64 - exact_rounded).abs().max()
                                                   / exact_rounded.abs().max()).item()}


def time_it(fn, device: torch.device, repeats: int, warmup: int, flush_l2: bool = False) -> float:
    for _ in range(warmup):
        fn()
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=device) if flush_l2 and device.type == "cuda" else None
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            if flush is not None:
                flush.zero_()  # evicts the inputs from L2 (50 MiB on H100/H200) before the timed run
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


def interpreter_checks(precisions: list[str]) -> list[dict]:
    """The Triton kernel in Triton's CPU interpreter at a small shape: errors only (labelled a correctness run)."""
    value, locations, weights = make_inputs(1, SMALL_SHAPES)
    ref64 = ms_deform_attn(value.double(), torch.tensor(SMALL_SHAPES), None, locations.double(), weights.double())
    checks = []
    for precision in precisions:
        dtype = torch.float16 if precision == "fp16" else torch.float32
        v, w = value.to(dtype), weights.to(dtype)
        exact = ms_deform_attn(v.double(), torch.tensor(SMALL_SHAPES), None, locations.double(), w.double())
        row = {"precision": precision, "implementation": "triton (ours), interpreter",
               **rel_errors(run("triton (ours)", v, SMALL_SHAPES, locations, w), ref64, exact)}
        print(f"interpreter correctness run {precision}: rel err vs fp64 {row['rel_err_vs_fp64']:.1e}, vs exact on "
              f"rounded inputs {row['rel_err_vs_exact_on_rounded_inputs']:.1e}", flush=True)
        checks.append(row)
    return checks


def frame_detector_check(config: str, device: torch.device) -> dict:
    """CONFIG's frame detector with the Triton op vs grid_sample (fp32, seeded random weights, one frame)."""
    from vita_deploy.config import get_config
    from vita_deploy.modeling.model import build_model
    from vita_deploy.modeling.ms_deform_attn import deform_attn_implementation
    from vita_deploy.pipeline.preprocess import padded_size

    cfg = get_config(config)
    torch.manual_seed(0)
    model = build_model(cfg).eval().to(device)
    h, w = padded_size(cfg.input.min_size_test, round(cfg.input.min_size_test * 16 / 9))
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        with deform_attn_implementation("reference"):
            ref = model.frame_detector(x)
        with deform_attn_implementation("triton"):
            ours = model.frame_detector(x)
    diff = {name: ((a - b).abs().max() / b.abs().max()).item()
            for name, a, b in zip(("frame_queries", "mask_features"), ours, ref)}
    print(f"{config} frame detector {h}x{w}, Triton op vs grid_sample: " +
          ", ".join(f"{k} {v:.1e}" for k, v in diff.items()), flush=True)
    return {"config": cfg.name, "input": f"{h}x{w}", "precision": "fp32", "rel_diff": diff}


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
    p.add_argument("--roofline-gbps", type=cli.positive_float, default=H200_PEAK_GBPS,
                   help="datasheet peak memory bandwidth for the roofline floor (bytes moved / peak; default the "
                        "H200's 4.8 TB/s)")
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--model-check", metavar="CONFIG", type=cli.config_name,
                   help="also run CONFIG's frame detector (seeded random weights, one frame at the test size, fp32) "
                        "with the Triton op and with grid_sample and report the relative difference of its outputs")
    p.add_argument("--out", type=cli.output_file, default="benchmarks/results/kernels")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    triton_installed = importlib.util.find_spec("triton") is not None
    if device.type == "cpu" and triton_installed:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the kernel's CPU interpreter
    impls = [i for i in IMPLEMENTATIONS if i != "triton (ours)" or (triton_installed and device.type == "cuda")]
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
            moved = bytes_moved(v, loc.float(), w, queries=value.shape[1])
            for impl in impls:
                with torch.inference_mode():
                    fn = prepare(impl, v, shapes, loc, w)  # inputs built once, outside the timed region
                    out = fn()
                    seconds = time_it(fn, device, a.repeats, a.warmup, flush_l2=True)
                row = {"frames": n, "precision": precision, "implementation": impl, "median_ms": seconds * 1000,
                       "gbps": moved / seconds / 1e9, "bytes_moved": moved,
                       "roofline_floor_ms": 1000 * moved / (a.roofline_gbps * 1e9),
                       **rel_errors(out, ref64, exact_rounded)}
                row["pct_of_floor"] = 100 * row["gbps"] / peak_gbps  # = floor time (bytes / peak) / time
                row["pct_of_roofline"] = 100 * row["roofline_floor_ms"] / row["median_ms"]
                rows.append(row)
                print(f"N={n:2d} {precision} {impl:24s} {row['median_ms']:9.3f} ms  {row['gbps']:7.2f} GB/s  "
                      f"{row['pct_of_floor']:5.1f} % of floor  roofline floor {row['roofline_floor_ms']:.3f} ms  "
                      f"rel err {row['rel_err_vs_fp64']:.1e}", flush=True)
    checks = interpreter_checks(a.precision) if device.type == "cpu" and triton_installed else []
    model_check = frame_detector_check(a.model_check, device) if a.model_check else None
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"environment": env, "shapes": shapes,
                                                            "peak_gbps": peak_gbps, "peak_gbps_source": peak_source,
                                                            "roofline_gbps": a.roofline_gbps,
                                                            "rows": rows, "interpreter_correctness": checks,
                                                            "model_check": model_check},
                                                           indent=2))
    lines = [f"# Deformable attention, {a.shapes}, 8 heads x 32 channels, 4 points, device {device}\n",
             f"Machine: {env.get('gpu', env['processor'])}, {env['cpu_count']} CPU cores, torch {env['torch']} "
             f"({env['torch_threads']} threads), {env['date']}. Memory bandwidth {peak_gbps:.1f} GB/s ({peak_source}); "
             "% of floor = (bytes that must move / bandwidth) / time; roofline floor = bytes that must move / "
             f"{a.roofline_gbps:.0f} GB/s (datasheet peak, --roofline-gbps).  ",
             f"Command: `{env['command']}`\n",
             "| N | precision | implementation | median ms | GB/s | % of floor | roofline floor ms | rel err vs fp64 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['frames']} | {r['precision']} | {r['implementation']} | {r['median_ms']:.3f} | {r['gbps']:.2f} | "
              f"{r['pct_of_floor']:.2f} | {r['roofline_floor_ms']:.4f} | {r['rel_err_vs_fp64']:.1e} |" for r in rows]
    if checks:
        lines += ["", f"Triton kernel, correctness run in Triton's CPU interpreter (not a speed figure): N=1, levels "
                  f"{SMALL_SHAPES}, Lq = S, 8 heads x 32 channels, 4 points.", "",
                  "| precision | rel err vs fp64 | rel err vs exact on rounded inputs |", "| --- | --- | --- |"]
        lines += [f"| {c['precision']} | {c['rel_err_vs_fp64']:.1e} | {c['rel_err_vs_exact_on_rounded_inputs']:.1e} |"
                  for c in checks]
    if model_check:
        lines += ["", f"{model_check['config']} frame detector, one {model_check['input']} frame, fp32, Triton op vs "
                  f"grid_sample on {device}: relative difference " + ", ".join(
                      f"{k} {v:.1e}" for k, v in model_check["rel_diff"].items()) + "."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
