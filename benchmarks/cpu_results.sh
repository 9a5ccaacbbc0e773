#!/usr/bin/env bash
# Reproduces the CPU results committed under benchmarks/results/ (2-core build machine, no GPU).
# Run from the repository root after `make install`; takes about 60 minutes on the idle machine.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
EXP=${EXP:-exports}
mkdir -p "$OUT" "$EXP"
# ONNX exports (native deformable attention: runs in ONNX Runtime without plugins).
[ -f "$EXP/tiny_native/manifest.json" ] || $PY export/to_onnx.py --config tiny --deform-attn native --out-dir "$EXP/tiny_native"
[ -f "$EXP/r50_native/manifest.json" ] || $PY export/to_onnx.py --config r50 --deform-attn native --out-dir "$EXP/r50_native"
[ -f "$EXP/r50_native_fp16/manifest.json" ] || $PY export/to_onnx.py --config r50 --deform-attn native --precision fp16 \
    --out-dir "$EXP/r50_native_fp16"
# tiny: eager vs ONNX Runtime, clip lengths 18/36/72 at 360p sources.
$PY benchmarks/bench.py --threads "${THREADS:-2}" --config tiny --backend torch onnxruntime --export "$EXP/tiny_native" \
    --frames 18 36 72 --resolution 360p --repeats 5 --warmup 2 --out "$OUT/cpu_tiny"
# r50 (random weights: speed does not depend on them): eager vs ONNX Runtime, fp32 and fp16, 18 frames at 360p
# (eager fp16 is CUDA autocast: listed as not run on the CPU).
$PY benchmarks/bench.py --threads "${THREADS:-2}" --config r50 --backend torch onnxruntime --precision fp32 fp16 \
    --export "$EXP/r50_native" "$EXP/r50_native_fp16" --frames 18 --resolution 360p --repeats 2 --warmup 1 \
    --out "$OUT/cpu_r50"
# Keep vs recompute against video length (issue 12): peak RSS, disk, fps; one child process per run.
$PY benchmarks/bench_streaming.py --threads "${THREADS:-2}" --config tiny --frames 36 360 3600 10000 \
    --features auto keep recompute --max-keep-frames 360 --max-recompute-frames 360 --repeats 3 \
    --repeats-max-frames 360 --resolution 360p --out "$OUT/cpu_memory"
$PY benchmarks/bench_streaming.py --threads "${THREADS:-2}" --config r50 --frames 18 36 --features keep recompute \
    --resolution 360p --warmup-frames 0 --out "$OUT/cpu_memory_r50"
$PY benchmarks/bench_streaming.py --threads "${THREADS:-2}" --config tiny --frames 36 1000 --features recompute \
    --resolution 720p 1080p --out "$OUT/cpu_memory_hires"
$PY benchmarks/bench_streaming.py --threads "${THREADS:-2}" --config tiny --postprocess-study 36 --resolution 360p 720p \
    --repeats 3 --out "$OUT/cpu_postprocess"
# Decoders (OpenCV vs PyAV, if installed: `pip install av`).
$PY benchmarks/bench_decoders.py --frames 300 --resolution 360p 720p --out "$OUT/cpu_decoders"
# Deformable attention alone at the pixel decoder's shapes (1 thread, as a kernel comparison); the Triton kernel as a
# correctness run in its CPU interpreter (fp32, fp16) and inside the tiny frame detector.
$PY benchmarks/bench_kernels.py --device cpu --threads 1 --frames 1 6 18 --precision fp32 fp16 --repeats 3 --warmup 1 \
    --model-check tiny --out "$OUT/kernels_cpu"
