#!/usr/bin/env bash
# The quality evidence on a 2-core CPU: the real model (default MiniLM base + LoRA, `--size cpu`) on ML-100K,
#   1. genre platforms (cross-domain) and a users split into same-domain shops, prepared under OUTDIR/data;
#   2. `compare --kind cross` and `compare --kind same`, one after the other, $JOBS units at a time:
#      scenarios $SCENARIOS, $SEEDS seeds, the arms $ARMS and the kind's recommended arm, which the
#      report's targets judge (README "Quality, measured"): genre platforms `fed+mix` (federated, then
#      `crossfed mix` on each platform), shops of one domain `federated`;
#   3. OUTDIR/summary.md: both kinds' target tables.
#
#   simulations/bench/quality_cpu.sh OUTDIR
#
# Environment: SEEDS (3), JOBS (2), SCENARIOS (full,scarce,new-items,new-users; the 45-min budget of one kind
# is full,scarce,new-items), ARMS (local, federated, pooled and every baseline), LEVERS (`--lever` values,
# space-separated; default the frozen-text lever fed-frozen; "" for none, as the budget is timed),
# RECOMMENDED_CROSS (fed+mix), RECOMMENDED_SAME (federated), KINDS ("cross same"), COMPARE_ARGS (extra
# options, e.g. --fresh). Rerunning with the same OUTDIR skips the units whose records exist, so a second
# call with more SCENARIOS, ARMS or LEVERS adds to the same reports. Reads ../shared/data (or $CROSSFED_SHARED_DATA);
# the derived ML-100K data stays under OUTDIR: do not commit it.
set -euo pipefail

OUT=${1:?usage: simulations/bench/quality_cpu.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${CROSSFED_SHARED_DATA:-$ROOT/../shared/data}
CROSSFED=${CROSSFED:-$ROOT/.venv/bin/crossfed}
SEEDS=${SEEDS:-3}
JOBS=${JOBS:-2}
SCENARIOS=${SCENARIOS:-full,scarce,new-items,new-users}
ARMS=${ARMS:-local,federated,pooled,like-rate,popularity,mf,mf-central,content}
RECOMMENDED_CROSS=${RECOMMENDED_CROSS:-fed+mix}
RECOMMENDED_SAME=${RECOMMENDED_SAME:-federated}
KINDS=${KINDS:-cross same}
LEVERS=${LEVERS-fed-frozen:train.encoder-every=0}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT/data"

[ -d "$OUT/data/cross" ] || "$CROSSFED" prepare movielens --src "$SHARED/ml-100k" --out "$OUT/data/cross" >/dev/null
[ -d "$OUT/data/same" ] || "$CROSSFED" prepare movielens --src "$SHARED/ml-100k" --out "$OUT/data/same" \
    --split users >/dev/null

lever_args=()
for lever in $LEVERS; do lever_args+=(--lever "$lever"); done
runs=()
for kind in $KINDS; do
    if [ "$kind" = cross ]; then rec=$RECOMMENDED_CROSS; else rec=$RECOMMENDED_SAME; fi
    arms=$ARMS
    case ",$arms," in *",$rec,"*) ;; *) arms="$arms,$rec" ;; esac
    echo "== compare --kind $kind, recommended arm $rec ($(date -u +%H:%M:%S))"
    # shellcheck disable=SC2086
    "$CROSSFED" compare --data "$OUT/data/$kind" --out "$OUT/$kind" --kind "$kind" --size cpu --seeds "$SEEDS" \
        --scenario "$SCENARIOS" --arms "$arms" --recommended "$rec" "${lever_args[@]}" \
        --jobs "$JOBS" ${COMPARE_ARGS:-} || echo "compare --kind $kind: some units failed (see $OUT/$kind/report.md)"
    runs+=("$OUT/$kind")
done
"$ROOT/.venv/bin/python" -m simulations.compare.report summary --out "$OUT/summary.md" "${runs[@]}"
echo "== done ($(date -u +%H:%M:%S)): $OUT/summary.md"
