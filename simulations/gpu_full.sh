#!/usr/bin/env bash
# The full comparison on one GPU (H100/H200): ML-100K genre platforms, both scenarios
# (full, scarce), every default arm (local, federated, +personal, +finetune, pooled, FedProx,
# FedAvgM, FedAdam, freeze-a, no-training baselines), 3 seeds; then the TALLRec movie split.
#
#   simulations/gpu_full.sh OUTDIR
#
# Installs nothing: run it from a checkout whose .venv was made by scripts/install.sh (or with
# PYTHON=/path/to/python). Reads ../shared/data (or $CROSSFED_SHARED_DATA). Writes
# OUTDIR/compare/report.{json,md,png} + rounds.png, OUTDIR/tallrec/report.{json,md},
# OUTDIR/timings.txt. The ML-100K derived data stays under OUTDIR: do not commit it.
set -euo pipefail

OUT=${1:?usage: simulations/gpu_full.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${CROSSFED_SHARED_DATA:-$ROOT/../shared/data}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
cd "$ROOT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

"$PY" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU: this will be slow)")
PY

stamp() { echo "$1 $(( $(date +%s) - T0 )) s" | tee -a "$OUT/timings.txt"; }
T0=$(date +%s)
: > "$OUT/timings.txt"

"$PY" -m simulations.cli prepare movielens --src "$SHARED/ml-100k" --out "$OUT/ml100k" --overwrite
stamp prepare

"$PY" -m simulations.compare compare --data "$OUT/ml100k" --out "$OUT/compare" \
    --seeds "${SEEDS:-3}" --size full --scenario both ${COMPARE_ARGS:-}
stamp compare

"$PY" -m simulations.compare tallrec --src "$SHARED/tallrec-movie" --ml100k "$SHARED/ml-100k" \
    --out "$OUT/tallrec" --size full --seeds "${SEEDS:-3}" ${TALLREC_ARGS:-}
stamp tallrec

cat "$OUT/compare/report.md" "$OUT/tallrec/report.md"
