#!/usr/bin/env bash
# Experiment 01: KIVI per-channel vs per-token key quantization; effect of G and R.
#   bash experiments/01_kivi/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
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
EXP=experiments/01_kivi
OUT=${KVSIM_RESULTS:-results}/01_kivi
mkdir -p "$OUT" "$EXP/figures"
start=$(date +%s)
for m in smollm2 gemma3-270m; do
  T=$(ensure_trace $m)
  $KVSIM replay -t "$T" --config $EXP/policies.cfg $MEASURE -o "$OUT/$m.h5"
  python3 analysis/kvsim_report.py "$OUT/$m.h5" --out "$OUT/report_$m" --quiet
done
python3 $EXP/plots.py "$OUT" $EXP/figures
echo "01_kivi: $(( $(date +%s) - start )) s"
