#!/usr/bin/env bash
# Experiment 04_skvq_vs_kivi: SKVQ vs KIVI at equal average bits; reorder, clip and window ablations
#   bash experiments/04_skvq_vs_kivi/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
# Shared preamble of every experiment's run.sh (copied into each, so each stands alone).
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
[ -x build/sim/kvsim ] || bash .ci/setup.sh build >/dev/null
KVSIM=build/sim/kvsim
TRACES="${KVSIM_TRACES:-/tmp/large}"       # real traces: <model>_large.h5 (not in git)
ensure_trace() {  # $1 = smollm2 | gemma3-270m; captures the trace when missing (2-3 min each)
  local f="$TRACES/$1_large.h5"
  if [ ! -f "$f" ]; then
    bash trace/capture/install.sh >/dev/null
    python3 trace/capture/kvsim_capture.py --preset large --model "$1" --out "$TRACES" --quiet >&2
  fi
  echo "$f"
}
MEASURE="${KVSIM_MEASURE:---sequences 0 1 2 3 --measure stride=8} --threads ${KVSIM_THREADS:-2} -q"
EXP=experiments/04_skvq_vs_kivi
OUT=${KVSIM_RESULTS:-results}/04_skvq_vs_kivi
mkdir -p "$OUT" "$EXP/figures"
start=$(date +%s)
for m in smollm2 gemma3-270m; do
  T=$(ensure_trace $m)
  for cfg in $EXP/*.cfg; do
    c=$(basename "$cfg" .cfg)
    case "$c" in *.*) [ "${c#*.}" = "$m" ] || continue; c=${c%%.*} ;; esac   # name.<model>.cfg: that model only
    $KVSIM replay -t "$T" --config "$cfg" $MEASURE -o "$OUT/${m}_$c.h5"
  done
done
python3 $EXP/plots.py "$OUT" $EXP/figures "$TRACES"
echo "04_skvq_vs_kivi: $(( $(date +%s) - start )) s"
