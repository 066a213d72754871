#!/usr/bin/env bash
# Experiment 06_combinations: MiniCache+KIVI, H2O+KIVI, l2norm+KIVI against their parts at equal memory
#   bash experiments/06_combinations/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
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
MEASURE="${KVSIM_MEASURE:---sequences 0 1 --measure stride=16} --threads ${KVSIM_THREADS:-2} -q"
EXP=experiments/06_combinations
OUT=${KVSIM_RESULTS:-results}/06_combinations
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
echo "06_combinations: $(( $(date +%s) - start )) s"
