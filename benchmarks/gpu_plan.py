"""The GPU suite's steps, their predicted GPU time, and the driver that runs one part and packs its results.

    python benchmarks/gpu_plan.py --predict                       # predicted minutes of each part on an H100/H200
    python benchmarks/gpu_plan.py --part 1 --out DIR              # run part 1 (bash benchmarks/gpu_suite.sh does this)
    python benchmarks/gpu_plan.py --part 1 --rehearse --out DIR   # the same steps at toy sizes on the CPU
    python benchmarks/gpu_plan.py --image-closure                 # installed distributions of the GPU image's set

Every part ends with exactly two files in --out: gpu_partN.tar.gz (every step's json/md/png and log) and
gpu_partN_summary.md (machine, each step's status, wall and predicted seconds, and each step's tables), because
only 8 files come back from a device command.

Prediction (seconds per step = processes x FIXED_S + GPU frames x ms/frame x mode factor + host-only work):
- GPU_MS_PER_FRAME = 1000 / 139.5: r50 360p eager on an H100, the official figure (issue 22); used for fp16 and
  tf32 as an upper bound (both are at least as fast as the official eager run), and x STRICT_FP32 for strict fp32.
- RECOMPUTE_FACTOR = 2.0: recompute mode runs the detector's mask-feature branch again in a second pass; measured
  here 1.76-1.90x keep (benchmarks/results/cpu_render_360p.md), rounded up.
- ENCODE_MS = 0.8, DECODE_MS = 0.35 per 360p frame: writing / reading the benchmark mp4 with OpenCV, measured on
  this CPU (Xeon, 1 thread): `make_benchmark_video` 180 frames 0.78 ms/frame, `open_video` 0.35 ms/frame.
- FIXED_S = 20 per process: Python + torch import and the r50 build measured 1.2 s here; the rest is an
  allowance (not measured: no GPU was lent) for CUDA context creation, cuDNN algorithm selection, Triton JIT and
  the untimed warm-up run.
- Kernel benchmark: the float64 references on the host, 3 per N, at 210 ms per frame (grid_sample reference
  3,769 ms for N = 18 on 1 thread, benchmarks/results/kernels_cpu.md); the GPU timings themselves are milliseconds.
- 8-bit GEMM step: GEMM8_SHAPES = 40 distinct GEMM shapes (34 for r50 at 384x640, counted on this CPU, rounded up)
  x 3 ops (fp16, fp8, int8) x GEMM8_OP_S = 0.1 s each (an allowance, not measured: quantizing on the device, the
  reference check, cuBLASLt's first-call heuristics, graph capture and 60 replays of 20 calls of a GEMM of at most
  ~18 GFLOP, tens of microseconds each on an H200), plus 60 eager detector frames at GPU_MS_PER_FRAME.
Each step is also given the time left in its part (the part's budget, default 540 s, under the 600 s cap of one
device command) as a timeout, and a step predicted not to fit in what is left is skipped and listed as such, so a
part always ends with its archive and summary.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GPU_MS_PER_FRAME = 1000 / 139.5
STRICT_FP32 = 2.0
RECOMPUTE_FACTOR = 2.0
ENCODE_MS = 0.8
DECODE_MS = 0.35
FIXED_S = 20.0
REF64_MS_PER_FRAME = 210.0
GEMM8_SHAPES = 40
GEMM8_OP_S = 0.1
PART_BUDGET_S = 540.0

# The GPU machine's image (tensorrt_notes.md "More facts"): these distributions and what they need, nothing else.
IMAGE_PACKAGES = ("torch", "triton", "onnx", "onnxruntime", "onnxscript", "opencv-python-headless", "scipy", "tqdm",
                  "matplotlib", "numpy")
# Wheels the suite needs that the image lacks (benchmarks/gpu_wheels.sh downloads them into .whl/).
CARRIED_WHEELS = ("pycocotools",)


def video_frames(lengths: list[int], runs: int) -> int:
    return sum(lengths) * runs


@dataclass
class Step:
    """One command of a part. `gpu` / `toy`: its arguments on the GPU and in the CPU rehearsal ({out} = the part's
    results folder). `predict_s`: predicted GPU seconds, `how`: the arithmetic, for the summary."""

    name: str
    figure: str
    gpu: list[str]
    toy: list[str]
    predict_s: float
    how: str
    env: dict = field(default_factory=dict)
    toy_env: dict = field(default_factory=dict)


def _e2e_step(name: str, figure: str, precisions: list[str], lengths: list[int], repeats: int, warmup: int,
              toy_precisions: list[str]) -> Step:
    factor = sum(STRICT_FP32 if p == "fp32" else 1.0 for p in precisions)
    frames = video_frames(lengths, repeats + warmup)
    s = FIXED_S + frames * GPU_MS_PER_FRAME / 1000 * factor + sum(lengths) * ENCODE_MS / 1000 \
        + 5 * len(precisions)  # model build per precision
    return Step(name, figure,
                ["benchmarks/bench.py", "--config", "r50", "--backend", "torch", "--device", "cuda", "--precision",
                 *precisions, "--frames", *map(str, lengths), "--resolution", "360p", "--repeats", str(repeats),
                 "--warmup", str(warmup), "--out", "{out}/" + name],
                ["benchmarks/bench.py", "--config", "tiny", "--backend", "torch", "--device", "cpu", "--precision",
                 *toy_precisions, "--frames", "6", "12", "--resolution", "240p", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--out", "{out}/" + name],
                s, f"{FIXED_S:.0f} s + {frames} frames x {GPU_MS_PER_FRAME:.2f} ms x {factor:g} (precisions) + encode")


def _streaming_step(name: str, figure: str, lengths: list[int], features: list[str], extra: list[str] = (),
                    toy_extra: list[str] = (), toy_env: dict | None = None, deform: list[str] = ("",),
                    toy_frames: list[str] = ("6", "12")) -> Step:
    runs = [(n, f, d) for d in deform for n in lengths for f in features]
    frames = sum((n + 36) * (RECOMPUTE_FACTOR if f == "recompute" else 1.0) for n, f, _ in runs)
    # decoding (DECODE_MS) overlaps compute in the background reader thread: not added
    s = len(runs) * FIXED_S + frames * GPU_MS_PER_FRAME / 1000 + sum(lengths) * ENCODE_MS / 1000 * len(deform)
    gpu = ["benchmarks/bench_streaming.py", "--config", "r50", "--device", "cuda", "--precision", "fp16",
           "--frames", *map(str, lengths), "--features", *features, "--max-keep-frames", str(max(lengths)),
           "--resolution", "360p", "--repeats", "1", "--warmup-frames", "36", *extra, "--out", "{out}/" + name]
    toy = ["benchmarks/bench_streaming.py", "--config", "tiny", "--device", "cpu", "--precision", "fp32",
           "--frames", *toy_frames, "--features", *features, "--max-keep-frames", "12", "--resolution", "240p",
           "--repeats", "1", "--warmup-frames", "0", "--threads", "1", *toy_extra, "--out", "{out}/" + name]
    return Step(name, figure, gpu, toy, s,
                f"{len(runs)} processes x {FIXED_S:.0f} s + {frames:.0f} frame-equivalents (warm-up 36 each, "
                f"recompute x {RECOMPUTE_FACTOR:g}) x {GPU_MS_PER_FRAME:.2f} ms + encode", toy_env=toy_env or {})


def _kernel_step() -> Step:
    ns = [1, 6, 18]
    s = FIXED_S + 3 * sum(ns) * REF64_MS_PER_FRAME / 1000 + 10  # + 10 s: the one-frame r50 model check
    return Step("gpu_kernels", "own deformable-attention kernel vs grid_sample reference vs Gather, N = 1/6/18, "
                "360x640 levels, GB/s and roofline floor (README target: <= 0.35 ms at N = 18 fp16)",
                ["benchmarks/bench_kernels.py", "--device", "cuda", "--frames", *map(str, ns), "--precision", "fp16",
                 "fp32", "--repeats", "20", "--warmup", "5", "--model-check", "r50", "--out", "{out}/gpu_kernels"],
                ["benchmarks/bench_kernels.py", "--device", "cpu", "--frames", "1", "--precision", "fp32", "fp16",
                 "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", "{out}/gpu_kernels"],
                s, f"{FIXED_S:.0f} s + float64 references 3 x {sum(ns)} frames x {REF64_MS_PER_FRAME:.0f} ms + "
                "10 s model check", toy_env={"TRITON_INTERPRET": "1"})


def _gemm8_step() -> Step:
    repeats, warmup = 50, 10
    s = FIXED_S + GEMM8_SHAPES * 3 * GEMM8_OP_S + (repeats + warmup) * GPU_MS_PER_FRAME / 1000
    return Step("gpu_gemm8", "r50 frame detector's GEMMs (Conv2d as implicit GEMM, Linear, attention projections) at "
                "384x640: fp16 mm vs FP8 torch._scaled_mm vs INT8 torch._int_mm, ms per shape, count-weighted total "
                "and the detector bound (GEMM share only; torch kernels, not TensorRT)",
                ["benchmarks/bench_gemm8.py", "--config", "r50", "--size", "384x640", "--device", "cuda", "--repeats",
                 str(repeats), "--warmup", str(warmup), "--out", "{out}/gpu_gemm8"],
                ["benchmarks/bench_gemm8.py", "--config", "tiny", "--size", "64x96", "--device", "cpu", "--repeats",
                 "1", "--warmup", "0", "--threads", "1", "--out", "{out}/gpu_gemm8"],
                s, f"{FIXED_S:.0f} s + {GEMM8_SHAPES} shapes x 3 ops x {GEMM8_OP_S:g} s + {repeats + warmup} detector "
                f"frames x {GPU_MS_PER_FRAME:.2f} ms")


def parts() -> dict[int, list[Step]]:
    """Part 1: the README targets' figures. Part 2: what explains them (precisions, kernel in the model, auto) and
    what 8-bit GEMMs could add."""
    return {
        1: [_e2e_step("gpu_r50_fp16", "r50 360p end to end, eager fp16 (autocast), T = 36 / 360 (README target: "
                      ">= 700 fps at T = 36 on an H200)", ["fp16"], [36, 360], 3, 1, ["fp16", "fp32"]),
            _kernel_step(),
            _streaming_step("gpu_keep_vs_recompute", "r50 fp16 360p keep vs recompute, T = 36 / 3,600: fps, host peak "
                            "(VmHWM of the run's own process), GPU peak, disk (README target: T = 3,600 >= 90 % of "
                            "T = 36 at flat memory, zero disk)", [36, 3600], ["keep", "recompute"])],
        2: [_e2e_step("gpu_r50_fp32_tf32", "r50 360p end to end, eager strict fp32 and TF32, T = 36 / 360 (against "
                      "the official eager 139.5 fps on an H100)", ["tf32", "fp32"], [36, 360], 3, 1,
                      ["tf32", "fp32"]),
            _streaming_step("gpu_kernel_in_model", "r50 fp16 360p, keep, deformable attention grid_sample reference "
                            "vs our Triton kernel, T = 36 / 360", [36, 360], ["keep"],
                            deform=["reference", "triton"], toy_env={"TRITON_INTERPRET": "1"},
                            toy_frames=["1"]),
            _streaming_step("gpu_auto_long", "r50 fp16 360p --features auto at T = 3,600 (what a user gets by default)",
                            [3600], ["auto"]),
            _gemm8_step()],
    }


def expand(step: Step, rehearse: bool) -> list[list[str]]:
    """The step's command lines (a deform sweep is one command per implementation)."""
    args = step.toy if rehearse else step.gpu
    name = step.name
    if name == "gpu_kernel_in_model":
        return [args[:-2] + ["--deform-attn", impl, "--out", args[-1] + "_" + impl] for impl in ("reference", "triton")]
    return [args]


def predicted_minutes() -> dict[int, float]:
    return {n: sum(s.predict_s for s in steps) / 60 for n, steps in parts().items()}


def machine() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
        return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"
    except ImportError:
        return "torch missing"


def run_part(part: int, out: Path, work_root: Path, rehearse: bool, budget_s: float, python: str) -> int:
    """Run PART's steps into work_root/gpu_partN/ (outside `out`: only two files may land there), then pack it into
    out/gpu_partN.tar.gz + out/gpu_partN_summary.md."""
    work = work_root / f"gpu_part{part}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, failed = [], 0
    for step in parts()[part]:
        elapsed = time.perf_counter() - start
        left = budget_s - elapsed
        if not rehearse and step.predict_s > left:
            rows.append((step, "skipped", 0.0, f"predicted {step.predict_s:.0f} s > {left:.0f} s left in the part"))
            print(f"[gpu_plan part {part}] skip {step.name}: predicted {step.predict_s:.0f} s, {left:.0f} s left",
                  flush=True)
            continue
        t0 = time.perf_counter()
        status, note = "ok", ""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(step.toy_env if rehearse else step.env)}
        with open(work / f"{step.name}.log", "w") as log:
            for argv in expand(step, rehearse):
                argv = [python] + [a.replace("{out}", str(work)) for a in argv]
                print(f"[gpu_plan part {part} {elapsed:5.0f} s] {shlex.join(argv)}", flush=True)
                log.write("$ " + shlex.join(argv) + "\n")
                log.flush()
                try:
                    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          timeout=max(1.0, budget_s - (time.perf_counter() - start)))
                    if proc.returncode:
                        status, note = "failed", f"exit {proc.returncode} (see {step.name}.log in the archive)"
                except subprocess.TimeoutExpired:
                    status, note = "timed out", "stopped at the part's budget (partial results kept)"
                if status != "ok":
                    break
        wall = time.perf_counter() - t0
        failed += status != "ok"
        tail = (work / f"{step.name}.log").read_text().splitlines()[-3:]
        print(f"[gpu_plan part {part}] {step.name}: {status} in {wall:.0f} s (predicted {step.predict_s:.0f} s "
              f"on the GPU)" + ("" if status == "ok" else "\n  " + "\n  ".join(tail)), flush=True)
        rows.append((step, status, wall, note))
    total = time.perf_counter() - start
    pack(part, out, work, rows, total, rehearse)
    return 1 if failed else 0


def pack(part: int, out: Path, work: Path, rows: list, total: float, rehearse: bool) -> None:
    archive = out / f"gpu_part{part}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work, arcname=work.name)
    kind = "CPU rehearsal at toy sizes (tiny model, 240p, 1-12 frames): not GPU figures" if rehearse else "GPU run"
    lines = [f"# GPU suite part {part}: {kind}", "",
             f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; part wall {total:.0f} s "
             f"(predicted on an H100/H200: {sum(s.predict_s for s in parts()[part]):.0f} s). "
             f"Everything else is in `{archive.name}` (`tar xzf {archive.name}`).", "",
             "| step | figure | status | wall s | predicted GPU s | note |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {s.name} | {s.figure} | {status} | {wall:.0f} | {s.predict_s:.0f} | {note} |"
              for s, status, wall, note in rows]
    for s, status, _, _ in rows:
        for md_file in sorted(work.glob(f"{s.name}*.md")):
            text = md_file.read_text().splitlines()
            keep = [x for x in text if x.startswith(("|", "- ", "Not run", "Machine", "Command"))][:40]
            body = []
            for x in keep:  # a blank line wherever a table starts or ends, so the markdown renders
                if body and body[-1].startswith("|") != x.startswith("|"):
                    body.append("")
                body.append(x)
            lines += ["", f"## {md_file.stem}", ""] + body
    (out / f"gpu_part{part}_summary.md").write_text("\n".join(lines) + "\n")
    print(f"[gpu_plan part {part}] wrote {archive} ({archive.stat().st_size / 2**20:.2f} MiB) and "
          f"{out / f'gpu_part{part}_summary.md'}", flush=True)


def image_closure(names: tuple[str, ...] = IMAGE_PACKAGES) -> list[md.Distribution]:
    """The installed distributions of `names` and everything they require (markers evaluated, extras ignored)."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # e.g. torch's CUDA libraries, absent from a CPU build
        seen[name] = dist
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return sorted(seen.values(), key=lambda d: d.metadata["Name"].lower())


def make_mirror_farm(farm: Path) -> list[str]:
    """A folder of links to the installed files of the image's package set only (for the rehearsal venv's .pth)."""
    farm.mkdir(parents=True, exist_ok=True)
    names = []
    for dist in image_closure():
        names.append(f"{dist.metadata['Name']}=={dist.version}")
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            link = farm / top
            if not link.exists() and (base / top).exists():
                link.symlink_to(base / top)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", type=int, choices=sorted(parts()))
    p.add_argument("--rehearse", action="store_true", help="toy sizes on the CPU")
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results/gpu"))
    p.add_argument("--work", default=os.environ.get("WORK", "/tmp/vita_gpu_work"),
                   help="scratch folder for the steps' outputs (packed into the archive)")
    p.add_argument("--budget-s", type=float, default=PART_BUDGET_S)
    p.add_argument("--predict", action="store_true", help="print each part's predicted GPU minutes and steps")
    p.add_argument("--mirror-farm", metavar="DIR", help="link the image's package set into DIR (rehearsal venv)")
    a = p.parse_args(argv)
    if a.mirror_farm:
        print("\n".join(make_mirror_farm(Path(a.mirror_farm))))
        return 0
    if a.predict:
        for n, steps in parts().items():
            print(f"part {n}: predicted {sum(s.predict_s for s in steps) / 60:.1f} min on an H100/H200")
            for s in steps:
                print(f"  {s.name}: {s.predict_s:.0f} s = {s.how}")
        return 0
    if a.part is None:
        p.error("give --part, --predict or --mirror-farm")
    return run_part(a.part, Path(a.out), Path(a.work), a.rehearse, a.budget_s, sys.executable)


if __name__ == "__main__":
    sys.exit(main())
