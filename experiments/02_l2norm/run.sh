#!/usr/bin/env bash
# Experiment 02_l2norm: key-norm vs later attention; l2norm vs random vs oracle eviction
#   bash experiments/02_l2norm/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
EXP=experiments/02_l2norm
OUT=${KVSIM_RESULTS:-results}/02_l2norm
mkdir -p "$OUT" "$EXP/figures"
start=$(date +%s)
replay_all_configs
python3 $EXP/plots.py "$OUT" $EXP/figures "$TRACES"
echo "02_l2norm: $(( $(date +%s) - start )) s"
