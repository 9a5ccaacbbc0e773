#!/usr/bin/env bash
# Downloads the wheels the GPU suite needs that the GPU machine's image lacks (its image: python 3.12, torch 2.11
# +cu130, triton 3.6, onnx, onnxruntime (CPU), onnxscript, opencv-python-headless, scipy, tqdm, matplotlib, numpy;
# no pycocotools, no network), into an ignored folder that the device command carries:
#
#   bash benchmarks/gpu_wheels.sh                        # cp312 manylinux wheels into .whl/ (for the GPU machine)
#   bash benchmarks/gpu_wheels.sh --python-version 3.11 --dest /tmp/w   # the rehearsal's wheels for this python
#
# Binary wheels only (no build on a machine without network or compilers), one version each, --no-deps: the
# suite imports nothing else the image lacks (pycocotools needs only numpy, which the image has). An existing
# wheel is not downloaded again.
set -euo pipefail
PY=${PY:-python3}
PYVER=3.12
DEST=.whl
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYVER=$2; shift 2 ;;
        --dest) DEST=$2; shift 2 ;;
        *) echo "gpu_wheels.sh: unknown argument $1 (use --python-version X.Y, --dest DIR)" >&2; exit 2 ;;
    esac
done
PYCOCOTOOLS=${PYCOCOTOOLS:-pycocotools==2.0.11}
mkdir -p "$DEST"
tag=cp${PYVER/./}
if ls "$DEST"/pycocotools-*-"$tag"-*.whl >/dev/null 2>&1; then
    echo "gpu_wheels.sh: $(ls "$DEST"/pycocotools-*-"$tag"-*.whl) already there"
    exit 0
fi
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "$PYCOCOTOOLS"
ls -l "$DEST"
