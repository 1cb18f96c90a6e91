#!/usr/bin/env bash
# The full comparison on one GPU (H100/H200), units in parallel processes:
#   1. ML-100K twice: genre platforms (cross-domain) and, where `prepare movielens --split` exists,
#      a users split into same-domain shops;
#   2. `compare --kind cross` on the genres and `compare --kind same` on the shops: both scenarios
#      (full, scarce), every default arm, $SEEDS seeds, --size full, $JOBS units at a time;
#   3. the TALLRec movie split;
#   4. OUTDIR/summary.md: both kinds' target tables.
#
#   simulations/bench/gpu_full.sh [--quick] OUTDIR
#
# Environment: JOBS (6), SEEDS (3), BUDGET_S (480; --quick 100): total seconds after which no new
# unit is launched (units already running finish; TALLRec runs only if TALLREC_MIN_S (60) remain);
# the reports are written either way, listing what is missing. FULL_ARMS: the arms of the full run
# (default: the main arms and every baseline; `all` = every default arm). QUICK=1 = --quick: 1 seed, --size ci,
# a few arms (QUICK_ARMS): checks the GPU path in about 2 minutes. COMPARE_ARGS / TALLREC_ARGS: extra
# options. Rerunning with the same OUTDIR skips the units whose records exist (COMPARE_ARGS=--fresh
# reruns them).
#
# Installs nothing: run it from a checkout whose .venv was made by scripts/install.sh (or with
# PYTHON=/path/to/python); Flower and cryptography are not needed. Reads ../shared/data (or
# $CROSSFED_SHARED_DATA). Writes OUTDIR/compare-{cross,same}/report.{json,md,png} + rounds.png +
# records/ + logs/, OUTDIR/tallrec/report.{json,md}, OUTDIR/summary.md, OUTDIR/timings.txt. The
# ML-100K derived data stays under OUTDIR: do not commit it.
set -euo pipefail

QUICK=${QUICK:-0}
if [ "${1:-}" = "--quick" ]; then
    QUICK=1
    shift
fi
OUT=${1:?usage: simulations/bench/gpu_full.sh [--quick] OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${CROSSFED_SHARED_DATA:-$ROOT/../shared/data}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
JOBS=${JOBS:-6}
TALLREC_MIN_S=${TALLREC_MIN_S:-60}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
if [ "$QUICK" = 1 ]; then
    SEEDS=1 SIZE=ci BUDGET_S=${BUDGET_S:-100}
    ARMS=(--arms "${QUICK_ARMS:-local,federated,fed+finetune,pooled,like-rate,popularity}")
else
    SEEDS=${SEEDS:-3} SIZE=full BUDGET_S=${BUDGET_S:-480}
    # the main arms and every baseline fit the budget; the levers (fedprox, freeze-a, ...) are a
    # separate run: FULL_ARMS=all for every default arm
    FULL_ARMS=${FULL_ARMS:-local,federated,fed+personal,fed+finetune,fed+mix,fed+private-b,pooled,fed-text-only,like-only,untrained,liked-share,popularity,like-rate,mf,mf-central}
    if [ "$FULL_ARMS" = all ]; then ARMS=(); else ARMS=(--arms "$FULL_ARMS"); fi
fi
cd "$ROOT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET_S))
left() { echo $((DEADLINE - $(date +%s))); }
stamp() { echo "$1 $(($(date +%s) - T0)) s" | tee -a "$OUT/timings.txt"; }
: >"$OUT/timings.txt"
RC=0

"$PY" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU: this will be slow)")
PY

"$PY" -m simulations.cli prepare movielens --src "$SHARED/ml-100k" --out "$OUT/ml100k" --overwrite
RUNS=("$OUT/compare-cross")
if "$PY" -m simulations.cli prepare movielens --help | grep -q -- --split; then
    "$PY" -m simulations.cli prepare movielens --src "$SHARED/ml-100k" --split users --out "$OUT/ml100k-users" \
        --overwrite
    RUNS+=("$OUT/compare-same")
else
    echo "prepare movielens has no --split here: the same-domain comparison is left out"
fi
stamp prepare

compare() { # compare KIND DATA RUN BUDGET_S
    "$PY" -m simulations.cli compare --kind "$1" --data "$2" --out "$3" --budget-s "$4" --jobs "$JOBS" \
        --seeds "$SEEDS" --size "$SIZE" --scenario both ${ARMS[@]+"${ARMS[@]}"} ${COMPARE_ARGS:-} || RC=$?
}
# cross gets half of what is left when the same-domain comparison follows, so both get their turn
compare cross "$OUT/ml100k" "$OUT/compare-cross" $(($(left) / ${#RUNS[@]}))
stamp compare-cross
if [ ${#RUNS[@]} -gt 1 ]; then
    compare same "$OUT/ml100k-users" "$OUT/compare-same" "$(left)"
    stamp compare-same
fi

if [ "$(left)" -ge "$TALLREC_MIN_S" ]; then
    "$PY" -m simulations.cli tallrec --src "$SHARED/tallrec-movie" --ml100k "$SHARED/ml-100k" \
        --out "$OUT/tallrec" --size "$SIZE" --seeds "$SEEDS" ${TALLREC_ARGS:-} || RC=$?
    stamp tallrec
else
    echo "tallrec left out: $(left) s of the ${BUDGET_S} s budget remain (TALLREC_MIN_S=$TALLREC_MIN_S)" |
        tee -a "$OUT/timings.txt"
fi

"$PY" -m simulations.compare.report summary --out "$OUT/summary.md" "${RUNS[@]}"
[ -f "$OUT/tallrec/report.md" ] && printf '\nTALLRec: see %s\n' "$OUT/tallrec/report.md" >>"$OUT/summary.md"
stamp summary
cat "$OUT/summary.md"
exit "$RC"
