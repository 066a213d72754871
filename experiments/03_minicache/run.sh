#!/usr/bin/env bash
# Experiment 03_minicache: adjacent-layer similarity; MiniCache start layer and retention vs gamma
#   bash experiments/03_minicache/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
EXP=experiments/03_minicache
OUT=${KVSIM_RESULTS:-results}/03_minicache
mkdir -p "$OUT" "$EXP/figures"
start=$(date +%s)
replay_all_configs
python3 $EXP/plots.py "$OUT" $EXP/figures "$TRACES"
echo "03_minicache: $(( $(date +%s) - start )) s"
