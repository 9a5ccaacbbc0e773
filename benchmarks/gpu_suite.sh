#!/usr/bin/env bash
# The README's GPU figures, in two parts that each fit one device command (<= 6 min predicted on an H100/H200,
# under the 10-minute cap; `python benchmarks/gpu_plan.py --predict` shows the arithmetic):
#
#   bash benchmarks/gpu_suite.sh --part 1   # r50 fp16 end to end T = 36/360; own kernel vs grid_sample vs Gather
#                                           # (N = 1/6/18, GB/s, roofline floor); keep vs recompute at T = 36/3,600
#   bash benchmarks/gpu_suite.sh --part 2   # strict fp32 / TF32 rows; the kernel inside the model; auto at T = 3,600
#   bash benchmarks/gpu_suite.sh --rehearse # every step of both parts at toy sizes on the CPU, in a venv that
#                                           # mirrors the GPU image's package set (tests/test_gpu_suite.py runs it)
#
# Each part writes exactly two files into $OUT: gpu_partN.tar.gz (every step's json/md/png and log) and
# gpu_partN_summary.md (readable on its own). Set-up on the bare image (python 3.12, torch 2.11+cu130, triton 3.6,
# onnx, onnxruntime CPU, onnxscript, opencv-python-headless, scipy, tqdm, matplotlib, numpy; no network): only
# the carried wheels, unpacked with `pip install --no-index --no-deps --target`, and PYTHONPATH (never an editable
# install: that needs setuptools from the network). Before the device call, here:
#
#   echo /.whl/ >> .git/info/exclude; bash benchmarks/gpu_wheels.sh      # cp312 manylinux pycocotools into .whl/
#
# then the device `run` tool, one call per part (carry the wheels; results come back from $OUT):
#
#   run(command="bash benchmarks/gpu_suite.sh --part 1", carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_suite.sh --part 2", carry=[".whl"], timeout_s=600)
#
# Not in the suite: ONNX Runtime CUDA rows (the image has no onnxruntime-gpu and its wheel is too big to carry;
# the backend stays, see vita_deploy/runtime/ort_engine.py) and torch.compile rows (they would run without
# deformable attention until the compile-parity fix lands in vita_deploy/kernels/torch_op.py). Once it has, add to
# part 2 in benchmarks/gpu_plan.py:
#   # _e2e_step("gpu_r50_compile", "r50 360p torch.compile fp16", ...) with --backend torch-compile
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/vita_site}
OUT=${OUT:-benchmarks/results/gpu}
export PYTHONUNBUFFERED=1

setup() {  # the carried wheels into $SITE, the checkout and $SITE on PYTHONPATH; nothing from the network
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "gpu_suite.sh: no wheels in $WHEELS: run" \
        "'bash benchmarks/gpu_wheels.sh' first and carry $WHEELS" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl
    export PYTHONPATH="$SITE:$PWD"
    "$PY" - <<'EOF'
import importlib, sys
missing = []
for name in ("torch", "triton", "onnx", "onnxruntime", "onnxscript", "cv2", "scipy", "tqdm", "matplotlib", "numpy",
             "pycocotools.mask", "vita_deploy.pipeline.inference"):
    try:
        importlib.import_module(name)
    except ImportError as e:
        missing.append(f"{name} ({e})")
if missing:
    sys.exit("gpu_suite.sh: cannot import " + ", ".join(missing))
import vita_deploy
print("gpu_suite.sh: set-up ok, python", sys.version.split()[0], "vita_deploy from", vita_deploy.__file__)
EOF
}

case "${1:-}" in
--part)
    part=${2:?"--part needs 1 or 2"}
    setup
    "$PY" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_suite.sh --part needs a CUDA GPU (torch.cuda.is_available() is False); use --rehearse on a CPU")
print("GPU:", torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda)
EOF
    mkdir -p "$OUT"
    "$PY" benchmarks/gpu_plan.py --part "$part" --out "$OUT"
    ;;
--rehearse)
    # A venv mirroring the image: this machine's closest python (the one running this; 3.12 when it has the
    # packages), a .pth that sees ONLY the image's package set (torch, triton, onnx, onnxruntime, onnxscript,
    # opencv-python-headless, scipy, tqdm, matplotlib, numpy and what they require, linked from this python's
    # installed files instead of reinstalling ~1 GB of wheels), then the same set-up as on the GPU: carried wheels
    # only (pycocotools for this python, from gpu_wheels.sh), PYTHONPATH, no editable install.
    HOSTPY=${HOSTPY:-$PY}
    R=${REHEARSE_DIR:-/tmp/vita_gpu_rehearsal}
    rm -rf "$R/venv" "$R/farm" "$R/site" "$R/out" "$R/work"
    mkdir -p "$R"
    start=$(date +%s)
    "$HOSTPY" -m venv "$R/venv"
    "$HOSTPY" benchmarks/gpu_plan.py --mirror-farm "$R/farm" > "$R/mirrored.txt"
    sitepk=$("$R/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$R/farm" > "$sitepk/image_packages.pth"
    pyver=$("$R/venv/bin/python" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
    echo "rehearsal venv: python $pyver (the GPU image has 3.12), image packages: $(tr '\n' ' ' < "$R/mirrored.txt")"
    WHEELS=${REHEARSE_WHEELS:-/tmp/vita_rehearse_wheels}
    PY="$HOSTPY" bash benchmarks/gpu_wheels.sh --python-version "$pyver" --dest "$WHEELS" >/dev/null
    PY="$R/venv/bin/python" SITE="$R/site"
    setup
    if "$PY" -c "import pytest" 2>/dev/null; then echo "gpu_suite.sh: the mirror venv sees pytest" >&2; exit 1; fi
    "$PY" benchmarks/gpu_plan.py --predict
    rc=0
    for part in 1 2; do
        "$PY" benchmarks/gpu_plan.py --part "$part" --rehearse --out "$R/out" --work "$R/work" || rc=1
    done
    ls -l "$R/out"
    echo "rehearsal done in $(( $(date +%s) - start )) s: $R/out (rc $rc)"
    exit $rc
    ;;
*)
    echo "usage: bash benchmarks/gpu_suite.sh --part 1|2 | --rehearse   (see the header)" >&2
    exit 2
    ;;
esac
