#!/usr/bin/env bash
# Experiment 01: KIVI per-channel vs per-token key quantization; effect of G and R.
#   bash experiments/01_kivi/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
for m in smollm2 gemma3-270m; do
  T=$(ensure_trace $m)
  $KVSIM replay -t "$T" --config $EXP/policies.cfg $MEASURE -o "$OUT/$m.h5"
  python3 analysis/kvsim_report.py "$OUT/$m.h5" --out "$OUT/report_$m" --quiet
done
python3 $EXP/plots.py "$OUT" $EXP/figures
finish_experiment
