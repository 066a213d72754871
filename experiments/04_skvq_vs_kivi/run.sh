#!/usr/bin/env bash
# Experiment 04_skvq_vs_kivi: SKVQ vs KIVI at equal average bits; reorder, clip and window ablations
#   bash experiments/04_skvq_vs_kivi/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
EXP=experiments/04_skvq_vs_kivi
OUT=${KVSIM_RESULTS:-results}/04_skvq_vs_kivi
mkdir -p "$OUT" "$EXP/figures"
start=$(date +%s)
replay_all_configs
python3 $EXP/plots.py "$OUT" $EXP/figures "$TRACES"
echo "04_skvq_vs_kivi: $(( $(date +%s) - start )) s"
