"""What 8-bit GEMMs could gain for the frame detector with torch's own kernels: FP8 and INT8 vs fp16, its real shapes.

    python benchmarks/bench_gemm8.py --config r50 --size 384x640 --device cuda --repeats 50 --warmup 10 \
        --out benchmarks/results/gemm8_h200

Shapes: forward hooks on every nn.Conv2d and nn.Linear of `model.frame_detector` (random weights: speed does not
depend on them) and on its attention modules (their q/k/v projections are `F.linear` calls on `in_proj_weight`), one
1x3xHxW frame. Each layer as a GEMM (M, K, N): Conv2d as an implicit GEMM, M = batch x Hout x Wout,
K = Cin / groups x kh x kw, N = Cout; Linear, M = the product of the leading dims, K = in_features,
N = out_features. Identical shapes are timed once and counted.

Per distinct shape: `a @ b` in fp16 (fp32 on the CPU: no fast fp16 matmul there), `torch._scaled_mm` with FP8 E4M3
inputs and per-tensor scales (bf16 out) and `torch._int_mm` (INT8 in, INT32 out), each on pre-quantized inputs,
`b` column-major (the layout `_scaled_mm` requires and cuBLASLt's fast path for both 8-bit ops; the layout of a
Linear's (N, K) weight). Padding to the documented constraints (`_scaled_mm`: K and N multiples of 16; `_int_mm`:
M > 16, K and N multiples of 8) is recorded in the row and paid in the time. Median of --repeats after --warmup: on
CUDA, CUDA events around a CUDA graph of INNER calls (so the host's launch overhead is not timed; an eager loop if
capture fails, said in the row); on the CPU, time.perf_counter around one call. Before timing, every result is
checked once against the fp32 product of the same (dequantized) inputs (max |out - ref| / max |ref|); a result off by
more than its tolerance gets no time. An op the device lacks (FP8 below SM89, ...) is recorded as "unavailable:" with
its exception's first line.
Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.benchmark import median_ms  # noqa: E402
from vita_deploy.commands import cli  # noqa: E402

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite E4M3FN value
INT8_MAX = 127.0
INNER = 20  # calls per CUDA graph replay
# Tolerances on max |out - ref| / max |ref| against the fp32 product of the same inputs: bf16 / fp16 output
# rounding (2^-9 / 2^-11 relative) plus accumulation order; INT32 accumulation is exact (only the fp32 reference
# rounds).
TOL = {"base": 1e-2, "fp8": 1e-2, "int8": 1e-4}


@dataclass
class Gemm:
    """One distinct (M, K, N) of the detector and the layers that run it."""

    m: int
    k: int
    n: int
    layers: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)


def block_of(name: str) -> str:
    """'backbone.res2.0.conv1' -> 'backbone.res2'; 'vita_mask_features' -> itself."""
    return ".".join(name.split(".")[:2])


def detector_gemms(model: nn.Module, x: torch.Tensor) -> list[Gemm]:
    """The GEMMs of one forward of `model` (the frame detector) on x (1, 3, H, W), deduplicated by (M, K, N) in order
    of first appearance."""
    from vita_deploy.modeling.transformer_layers import MultiheadAttention

    seen: dict[tuple[int, int, int], Gemm] = {}

    def add(name: str, m: int, k: int, n: int) -> None:
        g = seen.setdefault((m, k, n), Gemm(m, k, n))
        g.layers.append(name)
        if block_of(name) not in g.blocks:
            g.blocks.append(block_of(name))

    def conv_hook(name: str):
        def hook(mod: nn.Conv2d, inputs, output: torch.Tensor) -> None:
            kh, kw = mod.kernel_size
            add(name, output.shape[0] * output.shape[-2] * output.shape[-1],
                mod.in_channels // mod.groups * kh * kw, mod.out_channels)
        return hook

    def linear_hook(name: str):
        def hook(mod: nn.Linear, inputs, output: torch.Tensor) -> None:
            add(name, math.prod(inputs[0].shape[:-1]), mod.in_features, mod.out_features)
        return hook

    def attn_hook(name: str):
        def hook(mod: MultiheadAttention, args: tuple, kwargs: dict) -> None:
            names = ("query", "key", "value")
            qkv = [args[i] if i < len(args) else kwargs[names[i]] for i in range(3)]  # (L, N, C) each
            for proj, t in zip("qkv", qkv):
                add(f"{name}.in_proj_{proj}", math.prod(t.shape[:-1]), mod.embed_dim, mod.embed_dim)
        return hook

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook(name)))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook(name)))
        elif isinstance(mod, MultiheadAttention):
            handles.append(mod.register_forward_pre_hook(attn_hook(name), with_kwargs=True))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return list(seen.values())


def pad_to(v: int, multiple: int, minimum: int = 1) -> int:
    return max(minimum, -(-v // multiple) * multiple)


def padding(g: Gemm, mp: int, kp: int, np_: int) -> str:
    parts = [f"{d} {a}->{b}" for d, a, b in (("M", g.m, mp), ("K", g.k, kp), ("N", g.n, np_)) if a != b]
    return ", ".join(parts) or "none"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (both (M, N))."""
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def operands(m: int, k: int, n: int, mp: int, kp: int, np_: int, device: torch.device, seed: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """a (mp, kp) row-major and b (kp, np_) column-major (the transpose of an (np_, kp) contiguous weight), fp32,
    random in the (m, k, n) corner and zero in the padding."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.zeros(mp, kp)
    a[:m, :k] = torch.randn(m, k, generator=gen)
    w = torch.zeros(np_, kp)
    w[:n, :k] = torch.randn(n, k, generator=gen) / math.sqrt(k)
    return a.to(device), w.to(device).t()


def col_major(t: torch.Tensor) -> torch.Tensor:
    """The same (K, N) values with strides (1, K)."""
    return t.t().contiguous().t()


def prepare(op: str, g: Gemm, device: torch.device, base_dtype: torch.dtype
            ) -> tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], torch.Tensor], torch.Tensor, str]:
    """(the op on prepared inputs -> (Mp, Np), its result -> dequantized fp32, the fp32 reference (Mp, Np) of the
    same inputs, the padding)."""
    if op == "base":
        a, b = operands(g.m, g.k, g.n, g.m, g.k, g.n, device, 0)
        a, b = a.to(base_dtype), b.to(base_dtype)
        return (lambda: a @ b), (lambda out: out.float()), a.float() @ b.float(), "none"
    if op == "fp8":
        mp, kp, np_ = g.m, pad_to(g.k, 16), pad_to(g.n, 16)
        a, b = operands(g.m, g.k, g.n, mp, kp, np_, device, 0)
        sa = (a.abs().max() / FP8_MAX).clamp_min(1e-12).float()
        sb = (b.abs().max() / FP8_MAX).clamp_min(1e-12).float()
        # clamped: E4M3FN has no inf, a rounding step past 448 would not saturate; b8 keeps b's column-major strides
        a8, b8 = (a / sa).clamp(-FP8_MAX, FP8_MAX).to(FP8), col_major((b / sb).clamp(-FP8_MAX, FP8_MAX).to(FP8))
        ref = (a8.float() * sa) @ (b8.float() * sb)
        return (lambda: torch._scaled_mm(a8, b8, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16),
                (lambda out: out.float()), ref, padding(g, mp, kp, np_))
    if op == "int8":
        mp, kp, np_ = pad_to(g.m, 1, minimum=17), pad_to(g.k, 8), pad_to(g.n, 8)
        a, b = operands(g.m, g.k, g.n, mp, kp, np_, device, 0)
        sa, sb = a.abs().max() / INT8_MAX, b.abs().max() / INT8_MAX
        a8 = (a / sa).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        b8 = col_major((b / sb).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8))
        ref = (a8.float() * sa) @ (b8.float() * sb)
        return (lambda: torch._int_mm(a8, b8)), (lambda out: out.float() * (sa * sb)), ref, padding(g, mp, kp, np_)
    raise ValueError(f"unknown op {op!r}")


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> tuple[float, str]:
    """Median ms of one call of fn, and how it was timed."""
    if device.type != "cuda":
        return median_ms(fn, repeats, warmup), "perf_counter, 1 call"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream (cuBLASLt workspace, heuristics) before capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(INNER):
                fn()
        run, how = graph.replay, f"CUDA graph of {INNER} calls"
    except Exception as e:  # noqa: BLE001 - reported in the row, timed eagerly instead
        torch.cuda.synchronize()
        run = lambda: [fn() for _ in range(INNER)]  # noqa: E731
        how = f"eager loop of {INNER} calls (graph capture failed: {first_line(e)})"
    return event_median_ms(run, repeats, warmup) / INNER, how


def event_median_ms(run: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median ms of run() between two CUDA events, after `warmup` untimed runs."""
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def measure(g: Gemm, device: torch.device, base_dtype: torch.dtype, repeats: int, warmup: int) -> dict:
    """One row: each op checked against its fp32 reference, then timed (ms None unless status is 'ok')."""
    row = {"part": "shape", "blocks": ", ".join(g.blocks), "count": len(g.layers), "layers": g.layers,
           "M": g.m, "K": g.k, "N": g.n, "base_dtype": str(base_dtype).removeprefix("torch.")}
    for op in ("base", "fp8", "int8"):
        ms, err, how, pad = None, None, None, None
        try:
            fn, deq, ref, pad = prepare(op, g, device, base_dtype)
            with torch.inference_mode():
                out = fn()
                err = rel_err(deq(out), ref)
                del out, ref
                if not math.isfinite(err) or err > TOL[op]:
                    status = f"wrong: rel err {err:.2e} > {TOL[op]:g} (not timed)"
                else:
                    ms, how = time_ms(fn, device, repeats, warmup)
                    status = "ok"
        except Exception as e:  # noqa: BLE001 - an op this build / device lacks is a result, not a crash
            status = f"unavailable: {first_line(e)}"
        row.update({f"{op}_status": status, f"{op}_ms": ms, f"{op}_rel_err": err, f"{op}_padding": pad,
                    f"{op}_timing": how})
    for op in ("fp8", "int8"):
        row[f"{op}_speedup"] = row["base_ms"] / row[f"{op}_ms"] if row["base_ms"] and row[f"{op}_ms"] else None
    print(f"M={g.m} K={g.k} N={g.n} x{len(g.layers)}: " + ", ".join(
        f"{op} {row[f'{op}_ms']:.4f} ms" if row[f"{op}_ms"] is not None else f"{op} {row[f'{op}_status']}"
        for op in ("base", "fp8", "int8")), flush=True)
    return row


def detector_ms(model: nn.Module, x: torch.Tensor, device: torch.device, repeats: int, warmup: int) -> float:
    """Median ms of one eager frame-detector forward on x (fp16 autocast on CUDA, fp32 on the CPU)."""
    def fn() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            model(x)

    if device.type != "cuda":
        return time_ms(fn, device, repeats, warmup)[0]
    return event_median_ms(fn, repeats, max(warmup, 1))


def summary(rows: list[dict], det_ms: float, config: str, size: tuple[int, int]) -> dict:
    """Count-weighted totals over the detector's GEMMs, and what they bound for the whole detector (Amdahl)."""
    s = {"part": "summary", "config": config, "input": f"1x3x{size[0]}x{size[1]}",
         "layers": sum(r["count"] for r in rows), "distinct_shapes": len(rows), "detector_ms": det_ms}
    for op in ("base", "fp8", "int8"):
        missing = [r for r in rows if r[f"{op}_ms"] is None]
        s[f"{op}_missing_shapes"] = len(missing)
        s[f"{op}_total_ms"] = None if missing else sum(r["count"] * r[f"{op}_ms"] for r in rows)
    # each layer in the fastest of the three that ran correctly (fp16 where neither 8-bit op did)
    ok = [[r[f"{op}_ms"] for op in ("base", "fp8", "int8") if r[f"{op}_ms"] is not None] for r in rows]
    s["best_total_ms"] = None if not all(ok) else sum(r["count"] * min(t) for r, t in zip(rows, ok))
    base = s["base_total_ms"]
    s["gemm_share_of_detector"] = base / det_ms if base is not None and det_ms else None
    for op in ("fp8", "int8", "best"):
        t = s[f"{op}_total_ms"]
        s[f"{op}_gemm_speedup"] = base / t if base and t else None
        # the detector's time if only its GEMMs changed by that much, measured GEMM time subtracted from its own
        # eager time; meaningless when the isolated GEMMs already add up to more than the whole detector
        bound = det_ms - base + t if base is not None and t is not None and base < det_ms else None
        s[f"{op}_detector_bound_ms"] = bound
        s[f"{op}_detector_bound_speedup"] = det_ms / bound if bound else None
    return s


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(rows: list[dict], s: dict, env: dict, device: torch.device, base: str) -> str:
    timings = sorted({r[f"{op}_timing"] for r in rows for op in ("base", "fp8", "int8") if r[f"{op}_timing"]})
    cuda = device.type == "cuda"
    kernels = "cuBLAS / cuBLASLt" if cuda else "the CPU build's"
    kernels += " via `torch.mm`, `torch._scaled_mm`, `torch._int_mm`"
    convs = "cuDNN" if cuda else "oneDNN / the CPU convolution kernels"
    share = "-" if s["gemm_share_of_detector"] is None else f"{s['gemm_share_of_detector']:.0%}"
    lines = [f"# 8-bit GEMMs of the {s['config']} frame detector, {s['input']}, torch kernels on {device.type}", "",
             f"Machine: {env.get('gpu', env['processor'])}, torch {env['torch']} ({env['torch_threads']} threads), "
             f"{env['date']}.  ", f"Command: `{env['command']}`", "",
             f"- GEMM share only: {s['layers']} Conv2d / Linear / attention-projection GEMMs ({s['distinct_shapes']} "
             "distinct shapes); the detector also runs deformable sampling, GroupNorm / LayerNorm, attention's "
             "batched matmuls and softmax, upsampling and adds, which 8-bit GEMMs do not change.",
             f"- torch's own kernels ({kernels}), not TensorRT; baseline `a @ b` in {base}; the detector itself runs "
             f"its convolutions through {convs}, not `mm`.",
             "- 8-bit times are the GEMM alone on pre-quantized inputs (copies into padded buffers, quantizing "
             "activations and dequantizing the result are not timed: TensorRT fuses them into neighbouring layers); "
             "the inputs stay in cache across the repeated calls.",
             "- detector bound: the detector's own eager time (fp16 autocast on CUDA, fp32 on the CPU) with its GEMM "
             "time replaced (detector - GEMMs in the baseline + GEMMs in 8-bit): what the GEMMs alone can give" +
             (", with the GEMMs timed without launch overhead and the detector with it." if cuda else "."),
             "- timing: " + ("; ".join(timings) if timings else "nothing was timed") + ".",
             "",
             "| | baseline | fp8 (`_scaled_mm`) | int8 (`_int_mm`) | best per shape |",
             "| --- | --- | --- | --- | --- |",
             f"| GEMM total ms (count-weighted) | {_ms(s['base_total_ms'])} | {_ms(s['fp8_total_ms'])} | "
             f"{_ms(s['int8_total_ms'])} | {_ms(s['best_total_ms'])} |",
             f"| GEMM speed-up | 1.00x | {_x(s['fp8_gemm_speedup'])} | {_x(s['int8_gemm_speedup'])} | "
             f"{_x(s['best_gemm_speedup'])} |",
             f"| shapes not timed | {s['base_missing_shapes']} | {s['fp8_missing_shapes']} | "
             f"{s['int8_missing_shapes']} | |",
             f"| detector ms (eager, GEMM share {share}) | "
             f"{s['detector_ms']:.3f} | {_ms(s['fp8_detector_bound_ms'])} | {_ms(s['int8_detector_bound_ms'])} | "
             f"{_ms(s['best_detector_bound_ms'])} |",
             f"| detector bound speed-up | 1.00x | {_x(s['fp8_detector_bound_speedup'])} | "
             f"{_x(s['int8_detector_bound_speedup'])} | {_x(s['best_detector_bound_speedup'])} |", "",
             "| blocks | count | M | K | N | baseline ms | fp8 ms | fp8 x | fp8 padding | int8 ms | int8 x | "
             "int8 padding | rel err base / fp8 / int8 | not timed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = sorted(rows, key=lambda r: -(r["count"] * (r["base_ms"] or 0)))  # largest share first
    for r in order:
        errs = " / ".join("-" if r[f"{op}_rel_err"] is None else f"{r[f'{op}_rel_err']:.1e}"
                          for op in ("base", "fp8", "int8"))
        notes = "; ".join(f"{op}: {r[f'{op}_status']}" for op in ("base", "fp8", "int8")
                          if r[f"{op}_status"] != "ok").replace("|", "/")
        lines.append(f"| {r['blocks']} | {r['count']} | {r['M']} | {r['K']} | {r['N']} | {_ms(r['base_ms'])} | "
                     f"{_ms(r['fp8_ms'])} | {_x(r['fp8_speedup'])} | {r['fp8_padding'] or '-'} | {_ms(r['int8_ms'])} | "
                     f"{_x(r['int8_speedup'])} | {r['int8_padding'] or '-'} | {errs} | {notes} |")
    return "\n".join(lines) + "\n"


def size_hw(text: str) -> tuple[int, int]:
    """'384x640' -> (384, 640)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 384x640") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be at least 1")
    return h, w


@cli.command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=cli.config_name, default="r50")
    p.add_argument("--size", type=size_hw, default=(384, 640), help="frame HxW (default: 360p padded, 384x640)")
    p.add_argument("--device", type=cli.device, default=cli.default_device())
    p.add_argument("--repeats", type=cli.positive_int, default=50)
    p.add_argument("--warmup", type=cli.nonnegative_int, default=10)
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=cli.output_file, default="benchmarks/results/gemm8")
    a = p.parse_args(argv)
    from vita_deploy.benchmark import environment, write_rows
    from vita_deploy.config import get_config
    from vita_deploy.modeling.model import build_model

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":  # an exact fp32 reference, whatever the process default
        torch.backends.cuda.matmul.allow_tf32 = False
    base_dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(get_config(a.config)).eval().to(device)
    x = torch.randn(1, 3, *a.size, generator=torch.Generator().manual_seed(1)).to(device)
    gemms = detector_gemms(model.frame_detector, x)
    print(f"{a.config} frame detector 1x3x{a.size[0]}x{a.size[1]}: {sum(len(g.layers) for g in gemms)} GEMMs, "
          f"{len(gemms)} distinct shapes", flush=True)
    rows = [measure(g, device, base_dtype, a.repeats, a.warmup) for g in gemms]
    det = detector_ms(model.frame_detector, x, device, a.repeats, a.warmup)
    s = summary(rows, det, a.config, a.size)
    env = environment(argv)
    base = "fp16" if base_dtype == torch.float16 else "fp32 (CPU: no fast fp16 matmul)"
    text = markdown(rows, s, env, device, base)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out, env, rows + [s], text)
    print(text)
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
