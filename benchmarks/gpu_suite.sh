#!/usr/bin/env bash
# Every GPU figure of the README in one command (sized for < 8 minutes on one H100/H200):
#
#   bash benchmarks/gpu_suite.sh            # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_suite.sh --cpu      # smoke run of the same steps on the CPU at tiny sizes (checks the script)
#
# Writes under $OUT (default benchmarks/results/): gpu_r50.{json,md,_fps.png} (r50 360p, T = 18/36/72/360:
# eager fp32, fp16 autocast, torch.compile fp16, ONNX Runtime CUDA where onnxruntime-gpu is installed),
# gpu_tiny.* (the same for tiny), gpu_streaming.* (r50 fp16 keep vs recompute, T = 36/360/3,600, 360p and 720p,
# host + GPU peak memory, disk), gpu_kernel.* (eager r50 fp16 with the reference vs our Triton deformable
# attention, where vita_deploy.kernels provides it; plus bench_kernels.py), gpu_postprocess.* (post-processing
# per frame, previous vs shipped) and gpu_render.* (r50 fp16 at 720p with the annotated mp4, keep vs recompute).
#
# A bare GPU machine needs, besides a CUDA build of torch (with triton) and what the image of the `device` tool
# already holds (numpy, opencv-python-headless, onnx, onnxscript, scipy, matplotlib, tqdm, pillow): the wheels
# pycocotools (cp312 manylinux) and, for the ONNX Runtime CUDA rows, onnxruntime-gpu matching the machine's CUDA;
# then `pip install --no-deps -e .` (or PYTHONPATH=.). Carry them as /work/.library/device/README.md explains
# (pip download --only-binary=:all: --python-version 3.12 ... -d .whl pycocotools onnxruntime-gpu) and install
# with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:.`.
set -euo pipefail
PY=${PY:-python3}
OUT=${OUT:-benchmarks/results}
EXP=${EXP:-/tmp/vita_gpu_exports}
mkdir -p "$OUT" "$EXP"
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "--cpu" ]; then  # smoke: the same steps on the CPU at tiny sizes, outputs in a scratch folder
    OUT=${SMOKE_OUT:-/tmp/vita_gpu_suite_smoke}
    mkdir -p "$OUT"
    $PY benchmarks/bench.py --config tiny --backend torch --precision fp32 --device cpu --frames 6 12 \
        --resolution 240p --repeats 1 --warmup 0 --out "$OUT/gpu_tiny"
    $PY benchmarks/bench_streaming.py --config tiny --device cpu --frames 6 24 --features keep recompute \
        --resolution 240p --out "$OUT/gpu_streaming"
    $PY benchmarks/bench_streaming.py --config tiny --device cpu --frames 6 --features keep recompute --render \
        --resolution 240p --out "$OUT/gpu_render"
    $PY benchmarks/bench_streaming.py --config tiny --device cpu --postprocess-study 10 --resolution 240p \
        --out "$OUT/gpu_postprocess"
    echo "smoke run done: $OUT"
    exit 0
fi

$PY - <<'EOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("gpu_suite.sh needs a CUDA GPU (torch.cuda.is_available() is False); use --cpu for the smoke run")
print("GPU:", torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda)
EOF
START=$(date +%s)
stamp() { echo "[gpu_suite $(( $(date +%s) - START )) s] $*"; }

ORT_BACKENDS=""
ORT_EXPORTS=""
if $PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
    stamp "onnxruntime-gpu found: exporting r50 native fp32 (360p profile) for the ONNX Runtime CUDA rows"
    [ -f "$EXP/r50_native/manifest.json" ] || $PY export/to_onnx.py --config r50 --deform-attn native \
        --out-dir "$EXP/r50_native"
    ORT_BACKENDS="onnxruntime"
    ORT_EXPORTS="--export $EXP/r50_native"
else
    stamp "no onnxruntime-gpu (CUDAExecutionProvider): ONNX Runtime CUDA rows not run"
fi

# 1. r50 and tiny: fps per stage against clip length, every eager mode (+ ORT CUDA), 360p.
stamp "r50 360p eager fp32 / fp16 autocast"
$PY benchmarks/bench.py --config r50 --backend torch --precision fp32 fp16 \
    --frames 18 36 72 360 --resolution 360p --repeats 3 --warmup 1 --out "$OUT/gpu_r50"
if [ -n "$ORT_BACKENDS" ]; then
    stamp "r50 360p ONNX Runtime CUDA fp32"
    $PY benchmarks/bench.py --config r50 --backend onnxruntime --precision fp32 $ORT_EXPORTS \
        --frames 18 36 72 360 --resolution 360p --repeats 3 --warmup 1 --out "$OUT/gpu_r50_ort" || \
        stamp "ONNX Runtime CUDA run failed (see above); continuing"
fi
stamp "r50 360p torch.compile fp16"
$PY benchmarks/bench.py --config r50 --backend torch-compile --precision fp16 --frames 36 360 --resolution 360p \
    --repeats 3 --warmup 2 --out "$OUT/gpu_r50_compile" || stamp "torch.compile run failed (see above); continuing"
stamp "tiny 360p eager fp32 / fp16"
$PY benchmarks/bench.py --config tiny --backend torch --precision fp32 fp16 --frames 18 36 72 360 \
    --resolution 360p --repeats 3 --warmup 1 --out "$OUT/gpu_tiny"

# 2. keep vs recompute against video length, 360p and 720p: host + GPU peak memory, disk, fps.
stamp "r50 fp16 keep vs recompute, T = 36 / 360 / 3600, 360p and 720p"
$PY benchmarks/bench_streaming.py --config r50 --device cuda --precision fp16 --frames 36 360 3600 \
    --features keep recompute auto --max-keep-frames 3600 --resolution 360p 720p \
    --out "$OUT/gpu_streaming"

# 3. our deformable-attention kernel (the lead's Triton kernel) where it exists.
if $PY -c "from vita_deploy.modeling.ms_deform_attn import triton_installed; import sys; sys.exit(not triton_installed())" 2>/dev/null; then
    stamp "r50 fp16 360p, reference vs triton deformable attention"
    for impl in reference triton; do
        $PY benchmarks/bench_streaming.py --config r50 --device cuda --precision fp16 --frames 36 360 \
            --features auto --deform-attn $impl --repeats 3 --out "$OUT/gpu_kernel_$impl"
    done
    [ -f benchmarks/bench_kernels.py ] && $PY benchmarks/bench_kernels.py --device cuda --frames 1 6 18 \
        --precision fp32 fp16 --repeats 20 --warmup 5 --model-check r50 --out "$OUT/kernels_gpu" || true
else
    stamp "no Triton deformable-attention kernel here: kernel rows not run"
fi

# 4. post-processing per frame on the GPU (device RLE), previous vs shipped.
stamp "post-processing study"
$PY benchmarks/bench_streaming.py --config tiny --device cuda --postprocess-study 36 --resolution 360p 720p \
    --repeats 3 --out "$OUT/gpu_postprocess"
$PY benchmarks/bench_streaming.py --config r50 --device cuda --postprocess-study 36 --resolution 360p 720p \
    --repeats 3 --out "$OUT/gpu_postprocess_r50"
# 5. rendering the annotated mp4: keep (a second read) vs recompute (during pass 2), 720p, render timed apart.
stamp "r50 fp16 rendering, keep vs recompute, 720p"
$PY benchmarks/bench_streaming.py --config r50 --device cuda --precision fp16 --frames 36 360 \
    --features keep recompute --render --resolution 720p --out "$OUT/gpu_render"
stamp "done: results in $OUT"
