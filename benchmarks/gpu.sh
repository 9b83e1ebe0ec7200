#!/usr/bin/env bash
# GPU benchmark of the paper's four backbones on an NVIDIA machine with network access.
#
#   benchmarks/gpu.sh [OUT_DIR]          (default OUT_DIR: benchmarks/results/gpu)
#
# 1. makes a separate virtual environment (.venv-gpu) with xrayfx and onnxruntime-gpu 1.31.1
#    (CUDA 13 + cuDNN 9, from the nvidia-* wheels of its [cuda,cudnn] extras) instead of onnxruntime;
# 2. runs `xrayfx bench` on CUDA, and on TensorRT when libnvinfer is present, at fp32 and fp16,
#    batch 1, 8, 32 and 128, for InceptionV3, InceptionResNetV2, DenseNet201 and ResNet101V2
#    (random-init weights: speed does not depend on their values);
# 3. refuses to report a GPU number from a session that fell back to CPU: xrayfx's extractor already
#    refuses such a session, and the JSON is checked again here (first provider of every record).
#
# Exports run on the CPU (TensorFlow, 40-90 s and 6-11 GB each, one at a time). Environment:
#   PYTHON (default python3), CACHE_DIR (default cache-gpu), REPEATS (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
CACHE_DIR=${CACHE_DIR:-cache-gpu}
REPEATS=${REPEATS:-10}
VENV=.venv-gpu
ORT_GPU=1.31.1

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU visible (nvidia-smi missing or failing); this script measures GPUs only" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# Every pin of constraints.txt except the CPU onnxruntime, which onnxruntime-gpu replaces.
grep -v '^onnxruntime==' constraints.txt > "$VENV/constraints-gpu.txt"
"$VENV/bin/python" -m pip install --quiet -c "$VENV/constraints-gpu.txt" -e '.[fp16]'
"$VENV/bin/python" -m pip uninstall --quiet -y onnxruntime || true
"$VENV/bin/python" -m pip install --quiet -c "$VENV/constraints-gpu.txt" "onnxruntime-gpu[cuda,cudnn]==$ORT_GPU"

# The CUDA/cuDNN libraries of the nvidia-* wheels, where onnxruntime's loader finds them.
NV_LIBS=$("$VENV/bin/python" - <<'EOF'
import glob, os, site
dirs = sorted({os.path.dirname(p) for sp in site.getsitepackages()
               for p in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

DEVICES=cuda
if ldconfig -p 2>/dev/null | grep -q 'libnvinfer\.so' \
    || "$VENV/bin/python" -c "import ctypes; ctypes.CDLL('libnvinfer.so.10')" 2>/dev/null; then
    DEVICES=cuda,tensorrt
    echo "libnvinfer found: TensorRT is measured too"
else
    echo "libnvinfer not found: TensorRT is not measured (install TensorRT 10 to include it)"
fi

mkdir -p "$OUT"
JSON="$OUT/bench_gpu.json"
"$VENV/bin/xrayfx" bench --model paper --weights none --runtime onnxruntime --device "$DEVICES" \
    --precision fp32,fp16 --batch-sizes 1,8,32,128 --repeats "$REPEATS" --cache-dir "$CACHE_DIR" --json "$JSON.tmp"

# Refuse any record whose session did not run on the GPU provider it asked for.
"$VENV/bin/python" - "$JSON.tmp" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
want = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
bad = [r for r in doc["records"] if r["device"] in want and (not r["providers"] or r["providers"][0] != want[r["device"]])]
if bad:
    for r in bad:
        print(f"refused: {r['model']} {r['device']} {r['precision']} ran on {r['providers']}", file=sys.stderr)
    sys.exit("error: some sessions fell back to the CPU; no GPU number is reported")
print(f"{len(doc['records'])} GPU records checked: every session ran on the provider it asked for")
EOF
mv "$JSON.tmp" "$JSON"
echo "written: $JSON"
