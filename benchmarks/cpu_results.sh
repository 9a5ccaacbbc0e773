#!/usr/bin/env bash
# Reproduces the CPU results committed under benchmarks/results/ (2-core build machine, no GPU).
# Run from the repository root after `make install`; takes about 30 minutes on the idle machine.
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
# Peak host memory against video length: streaming pipeline vs all frames at once (tiny, 360p source).
$PY benchmarks/bench.py --threads "${THREADS:-2}" --config tiny --frames 18 --repeats 1 --warmup 0 --resolution 360p \
    --memory-study 36 360 1000 10000 --out "$OUT/cpu_memory"
# Deformable attention alone at the pixel decoder's shapes (1 thread, as a kernel comparison); the Triton kernel as a
# correctness run in its CPU interpreter (fp32, fp16) and inside the tiny frame detector.
$PY benchmarks/bench_kernels.py --device cpu --threads 1 --frames 1 6 18 --precision fp32 fp16 --repeats 3 --warmup 1 \
    --model-check tiny --out "$OUT/kernels_cpu"
