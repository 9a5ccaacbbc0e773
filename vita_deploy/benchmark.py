"""End-to-end and per-stage benchmarks of whole-video inference (what `benchmarks/bench.py` runs).

Every run decodes a real mp4 (so decoding is counted), then times each stage of `run_video` (decode,
preprocess, frame detector, VITA, post-processing incl. mask upsampling and RLE) and the end-to-end wall time,
after warm-up, reporting the median and p90 over repeats. Stage times come from CUDA events on the GPU and
perf_counter on the CPU; fps is video frames per second. Peak memory: host resident set (VmHWM, reset before
each run) and, on CUDA, the allocator's peak.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from vita_deploy.config import ModelConfig
from vita_deploy.files import atomic_write_text
from vita_deploy.pipeline.inference import DetectorFn, VitaFn, run_video
from vita_deploy.pipeline.video_io import open_video

RESOLUTIONS = {"240p": (240, 426), "360p": (360, 640), "480p": (480, 854), "720p": (720, 1280),
               "1080p": (1080, 1920)}
EAGER_PRECISIONS = ("fp32", "tf32", "fp16")


def set_matmul_precision(precision: str) -> dict[str, bool]:
    """Set TF32 explicitly for an eager row and return the flags, so every row says what it ran.

    fp32: strict fp32 matmuls and convolutions (cuDNN allows TF32 convolutions by default, so "fp32" would silently
    be TF32 otherwise); tf32: TF32 tensor cores for fp32 matmuls and convolutions; fp16: CUDA autocast, with the
    ops autocast leaves in fp32 strict fp32. Returns {"matmul_tf32": ..., "cudnn_tf32": ...}.
    """
    if precision not in EAGER_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {EAGER_PRECISIONS}")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32}


STAGES = ("decode", "preprocess", "detector", "vita", "mask_features", "postprocess")  # mask_features: recompute


def make_benchmark_video(path: Path, frames: int, height: int, width: int, fps: float = 30.0, seed: int = 0) -> Path:
    """A moving-shapes mp4 (mp4v) of the given size: real decoding work for the benchmark."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    centers = rng.uniform(0.2, 0.8, (3, 2)) * (width, height)
    velocity = rng.uniform(-3, 3, (3, 2))
    for t in range(frames):
        frame = background.copy()
        for i, (c, v) in enumerate(zip(centers, velocity)):
            x, y = (c + v * t) % (width, height)
            cv2.circle(frame, (int(x), int(y)), max(8, height // 8), (60 * i, 200, 255 - 60 * i), -1)
        writer.write(frame)
    writer.release()
    return path


def reset_host_peak() -> None:
    """Reset VmHWM (Linux) so the next read gives this run's peak resident set."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def host_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class RunResult:
    backend: str
    precision: str
    device: str
    config: str
    resolution: str
    frames: int
    end_to_end_s: dict[str, float]
    stages_s: dict[str, dict[str, float]]
    fps: dict[str, float]
    host_peak_mb: float
    gpu_peak_mb: float | None
    repeats: int
    warmup: int
    extra: dict = field(default_factory=dict)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall-clock ms of one host-synchronous call of fn (time.perf_counter), after `warmup` untimed calls:
    the CPU timing of the micro-benchmarks (GPU timings use CUDA events)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p90": float(np.percentile(values, 90)), "min": min(values)}


def bench_video(video: Path, detector: DetectorFn, vita: VitaFn, cfg: ModelConfig, device: torch.device,
                repeats: int, warmup: int, **run_kwargs) -> tuple[list[float], dict[str, list[float]], float, float | None]:
    """Time `run_video` on a decoded mp4: end-to-end seconds per repeat, stage seconds, host and GPU peaks."""
    e2e, stages = [], {s: [] for s in STAGES}
    host_peak, gpu_peak = 0.0, None
    for i in range(warmup + repeats):
        source = open_video(video)
        reset_host_peak()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        pred = run_video(source, detector, vita, cfg, device=device, num_frames=source.num_frames, **run_kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if i < warmup:
            continue
        e2e.append(elapsed)
        for s in STAGES:
            stages[s].append(pred.timings.get(s, 0.0))
        host_peak = max(host_peak, host_peak_mb())
        if device.type == "cuda":
            gpu_peak = max(gpu_peak or 0.0, torch.cuda.max_memory_allocated() / 2**20)
    return e2e, stages, host_peak, gpu_peak


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(argv: list[str] | None = None) -> dict:
    """Machine, accelerator, library versions and the exact command."""
    env = {
        "command": " ".join([Path(sys.executable).name, *(argv if argv is not None else sys.argv)]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_gib": round(_total_ram_mb() / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return env


def result_from_timings(backend: str, precision: str, device: torch.device, cfg: ModelConfig, resolution: str,
                        frames: int, e2e: list[float], stages: dict[str, list[float]], host_peak: float,
                        gpu_peak: float | None, repeats: int, warmup: int) -> RunResult:
    stage_summary = {s: summarize(v) for s, v in stages.items()}
    fps = {"end_to_end": frames / statistics.median(e2e)}
    for s, v in stage_summary.items():
        if v["median"] > 0:
            fps[s] = frames / v["median"]
    return RunResult(backend, precision, str(device), cfg.name, resolution, frames, summarize(e2e), stage_summary,
                     fps, host_peak, gpu_peak, repeats, warmup)


def write_markdown(results: list[RunResult], path: Path, env: dict, memory: list[dict] | None = None,
                   not_run: list[dict] | None = None) -> None:
    """One table row per run, then the runs asked for that cannot run here and why; with `memory` (rows of
    `memory_study`) a second table: peak memory vs video length."""
    lines = ["# Benchmark results\n", f"Machine: {env.get('gpu', env['processor'])}, {env['cpu_count']} CPU cores, "
             f"{env.get('ram_gib', '?')} GiB RAM, "
             f"torch {env['torch']} ({env['torch_threads']} threads), {env['date']}.  ",
             f"Command: `{env['command']}`\n",
             "| config | backend | precision | device | resolution | frames | end-to-end fps | e2e median s (p90) "
             "| decode | preprocess | detector | VITA | mask features | post | host peak MB | GPU peak MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        st = [f"{r.stages_s[s]['median'] * 1000:.0f} ms" for s in STAGES]
        gpu = f"{r.gpu_peak_mb:.0f}" if r.gpu_peak_mb is not None else "-"
        backend = r.backend + (f" ({r.extra['features']})" if r.extra.get("features", "auto") != "auto" else "")
        lines.append(f"| {r.config} | {backend} | {r.precision} | {r.device} | {r.resolution} | {r.frames} | "
                     f"{r.fps['end_to_end']:.2f} | {r.end_to_end_s['median']:.2f} ({r.end_to_end_s['p90']:.2f}) | "
                     + " | ".join(st) + f" | {r.host_peak_mb:.0f} | {gpu} |")
    for skip in not_run or []:
        lines.append(f"\nNot run: {skip['backend']} {skip['precision']} on {skip['device']}: {skip['reason']}.")
    if memory:
        lines += ["", "Peak memory against video length (streaming: chunked detector, mask features in the "
                  "FeatureStore; naive: all frames at once):", "",
                  "| frames | streaming host peak MB | streaming GPU peak MB | streaming s | naive host peak MB "
                  "| naive s |", "| --- | --- | --- | --- | --- | --- |"]
        for m in memory:
            gpu = f"{m['streaming_gpu_peak_mb']:.0f}" if m.get("streaming_gpu_peak_mb") is not None else "-"
            naive = (f"{m['naive_host_peak_mb']:.0f} | {m['naive_s']:.1f}" if m.get("naive_host_peak_mb") is not None
                     else f"not run ({m.get('naive_skipped', 'skipped')}) | -")
            lines.append(f"| {m['frames']} | {m['streaming_host_peak_mb']:.0f} | {gpu} | {m['streaming_s']:.1f} "
                         f"| {naive} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_json(results: list[RunResult], path: Path, env: dict, extra: dict | None = None) -> None:
    atomic_write_text(path, json.dumps({"environment": env, "results": [asdict(r) for r in results], **(extra or {})},
                                       indent=2))


def write_rows(out: Path, env: dict, rows: list[dict], markdown: str) -> None:
    """OUT.json ({"environment", "rows"}) and OUT.md, atomically: for benchmarks whose rows are plain dicts."""
    atomic_write_text(out.with_suffix(".json"), json.dumps({"environment": env, "rows": rows}, indent=2))
    atomic_write_text(out.with_suffix(".md"), markdown)


def _save_plot(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_fps(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        series.setdefault(f"{r.config} {r.backend} {r.precision} {r.device} {r.resolution}", []).append(
            (r.frames, r.fps["end_to_end"]))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("clip length (frames)")
    ax.set_ylabel("end-to-end fps")
    _save_plot(fig, ax, path)


def _total_ram_mb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError):
        return 16 * 1024.0


def memory_study(config: str, checkpoint: str | None, device: torch.device, tmp: Path, resolution: str,
                 lengths: list[int], out: Path, feature_dtype: torch.dtype = torch.float16) -> list[dict]:
    """Peak memory against video length: the streaming pipeline (chunks of 18, features in a FeatureStore with
    a 1 GiB host budget then disk) vs a naive run (all frames decoded into memory, one detector batch).

    The naive run is skipped where a linear fit of its measured peaks predicts more than half of the RAM.
    """
    import dataclasses

    from vita_deploy.loading import load_model
    from vita_deploy.pipeline.inference import eager_graphs

    model = load_model(checkpoint, config).to(device)
    detector, vita = eager_graphs(model)
    h, w = RESOLUTIONS[resolution]
    rows: list[dict] = []
    naive_points: list[tuple[int, float]] = []
    for n in sorted(lengths):
        video = make_benchmark_video(tmp / f"mem_{n}.mp4", n, h, w)
        row = {"frames": n, "resolution": resolution, "config": config, "device": str(device)}
        e2e, _, host, gpu = bench_video(video, detector, vita, model.cfg, device, repeats=1, warmup=0,
                                        host_budget_mb=1024.0, feature_dtype=feature_dtype, spill_dir=str(tmp))
        row.update(streaming_host_peak_mb=host, streaming_gpu_peak_mb=gpu, streaming_s=e2e[0])
        predicted = None
        if len(naive_points) >= 2:
            (n0, m0), (n1, m1) = naive_points[-2:]
            predicted = m1 + (m1 - m0) / (n1 - n0) * (n - n1)
        if predicted is not None and predicted > 0.5 * _total_ram_mb():
            row.update(naive_host_peak_mb=None, naive_skipped=f"predicted {predicted / 1024:.1f} GiB")
        else:
            frames = list(open_video(video))
            naive_cfg = dataclasses.replace(model.cfg, inference=dataclasses.replace(model.cfg.inference, chunk_size=n))
            reset_host_peak()
            start = time.perf_counter()
            run_video(frames, detector, vita, naive_cfg, device=device, device_budget_mb=float("inf"))
            row.update(naive_host_peak_mb=host_peak_mb(), naive_s=time.perf_counter() - start)
            naive_points.append((n, row["naive_host_peak_mb"]))
            del frames
        rows.append(row)
        print(f"memory study {n} frames: streaming host peak {host:.0f} MB"
              + (f", naive {row['naive_host_peak_mb']:.0f} MB" if row.get("naive_host_peak_mb") else
                 f", naive skipped ({row.get('naive_skipped')})"), flush=True)
    plot_memory(rows, out.with_name(out.name + "_memory.png"))
    return rows


def plot_memory(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["frames"] for r in rows], [r["streaming_host_peak_mb"] for r in rows], "o-",
            label="streaming (chunks of 18, features -> host budget -> disk)")
    naive = [r for r in rows if r.get("naive_host_peak_mb")]
    if naive:
        ax.plot([r["frames"] for r in naive], [r["naive_host_peak_mb"] for r in naive], "s--",
                label="naive (all frames at once)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("video length (frames)")
    ax.set_ylabel("peak host memory (MB)")
    _save_plot(fig, ax, path)
