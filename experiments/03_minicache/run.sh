#!/usr/bin/env bash
# Experiment 03_minicache: adjacent-layer similarity; MiniCache start layer and retention vs gamma
#   bash experiments/03_minicache/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_standard_experiment
