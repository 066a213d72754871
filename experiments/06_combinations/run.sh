#!/usr/bin/env bash
# Experiment 06_combinations: MiniCache+KIVI, H2O+KIVI, l2norm+KIVI against their parts at equal memory
#   bash experiments/06_combinations/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
DEFAULT_MEASURE="--sequences 0 1 --measure stride=16"
source "$(dirname "$0")/../common.sh"
EXP=experiments/06_combinations
OUT=${KVSIM_RESULTS:-results}/06_combinations
mkdir -p "$OUT" "$EXP/figures"
start=$(date +%s)
replay_all_configs
python3 $EXP/plots.py "$OUT" $EXP/figures "$TRACES"
echo "06_combinations: $(( $(date +%s) - start )) s"
