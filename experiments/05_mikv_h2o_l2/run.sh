#!/usr/bin/env bash
# Experiment 05_mikv_h2o_l2: MiKV vs H2O vs l2norm at equal memory (10-50% of fp16)
#   bash experiments/05_mikv_h2o_l2/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
EXP=experiments/05_mikv_h2o_l2
OUT=${KVSIM_RESULTS:-results}/05_mikv_h2o_l2
mkdir -p "$OUT" "$EXP/figures"
start=$(date +%s)
replay_all_configs
python3 $EXP/plots.py "$OUT" $EXP/figures "$TRACES"
echo "05_mikv_h2o_l2: $(( $(date +%s) - start )) s"
