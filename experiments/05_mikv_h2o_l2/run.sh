#!/usr/bin/env bash
# Experiment 05_mikv_h2o_l2: MiKV vs H2O vs l2norm at equal memory (10-50% of fp16)
#   bash experiments/05_mikv_h2o_l2/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_standard_experiment
