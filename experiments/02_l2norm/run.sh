#!/usr/bin/env bash
# Experiment 02_l2norm: key-norm vs later attention; l2norm vs random vs oracle eviction
#   bash experiments/02_l2norm/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_standard_experiment
