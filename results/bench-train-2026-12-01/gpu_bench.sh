#!/usr/bin/env bash
# Issue 12 on one GPU: the trainer against the plain eager peft loop, and federation size.
# Needs torch (CUDA), transformers, peft; NOT flwr or cryptography (the benches import neither).
#
#   results/bench-train-2026-12-01/gpu_bench.sh OUTDIR        (from the repository root; ~5 min on an H200)
#   (+ up to BATCH_BUDGET_S = 600 s of launching for `bench batch` on ML-100K, then its running units)
#
# BASE: base model (default: the bundled MiniLM, `default`; or a local HF folder, e.g. a BERT-base
# for the second row of the issue's table). DATA: a prepared DATASET folder; default: ML-100K genre
# platforms prepared from ../shared/data/ml-100k when present, else the embedded synthetic shops.
set -euo pipefail
OUT=${1:?usage: gpu_bench.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
BASE=${BASE:-default}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
"$PY" -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" | tee "$OUT/versions.txt"
DATA_ARGS=()
SHARED=${CROSSFED_SHARED_DATA:-$ROOT/../shared/data}
if [ -n "${DATA:-}" ]; then
    DATA_ARGS=(--data "$DATA")
elif [ -d "$SHARED/ml-100k" ]; then
    "$PY" -m simulations.cli prepare movielens --src "$SHARED/ml-100k" --out "$OUT/ml100k" --overwrite > /dev/null
    DATA_ARGS=(--data "$OUT/ml100k" --platform P1_action_scifi)
fi
# The main checkout's trainer before issue 12, timed in the same process as "reference".
git show 2fd0f8a:clients/trainer.py > "$OUT/trainer_2fd0f8a.py"
bench() {  # name, then bench_train options
    local name=$1; shift
    "$PY" -m simulations.bench_train --base "$BASE" "${DATA_ARGS[@]}" --reference-trainer "$OUT/trainer_2fd0f8a.py" \
        --out "$OUT/$name" "$@" 2>&1 | tee "$OUT/$name.log"
}
# the quality preset's batch (compare --size full: train 256, eval 1024) and the default (128 / 128)
bench full-b256 --batch 256 --eval-batch 1024 --train-examples 4096 --infer-examples 16384 --repeats 3
bench default-b128 --batch 128 --eval-batch 128 --train-examples 2048 --infer-examples 8192 --repeats 3
# every run above has "trainer compiled" rows (train.compile = default: inductor); CUDA graphs as well:
bench default-b128-cudagraphs --batch 128 --eval-batch 128 --train-examples 2048 --infer-examples 8192 \
    --repeats 3 --compile reduce-overhead
# federation size: peak RSS / GPU memory and round time at 3, 10, 100 platforms (tiny-random and the base)
"$PY" -m simulations.bench_scale --platforms 3,10,100 --base tiny-random --out "$OUT/scale-tiny" 2>&1 | tee "$OUT/scale-tiny.log"
"$PY" -m simulations.bench_scale --platforms 3,10 --base "$BASE" --set train.max-examples=512 \
    --out "$OUT/scale-base" 2>&1 | tee "$OUT/scale-base.log"
# quality: the default (history items without encoder gradient) against train.history-grad=true,
# 2 seeds, the full preset; a few minutes of the budget (no unit starts after BUDGET_S)
if [ -d "$OUT/ml100k" ]; then
    "$PY" -m simulations.cli compare --data "$OUT/ml100k" --out "$OUT/quality" --size full --seeds 2 \
        --scenario full --arms local,federated --lever history-grad:train.history-grad=true \
        --jobs "${JOBS:-4}" --budget-s "${BUDGET_S:-600}" 2>&1 | tail -20 | tee "$OUT/quality.log"
fi
# the largest train batch the validation AUC tolerates (issue 12): the local arm at each batch size, lr
# scaled by the sqrt rule from the full preset's (256, 1e-3), 2 seeds, every round (no early stop)
if [ -d "$OUT/ml100k" ]; then
    "$PY" -m simulations.bench_batch --data "$OUT/ml100k" --size full --batches 64,128,256,512,1024 --seeds 2 \
        --jobs "${JOBS:-4}" --budget-s "${BATCH_BUDGET_S:-600}" --out "$OUT/batch" 2>&1 | tee "$OUT/batch.log"
fi
