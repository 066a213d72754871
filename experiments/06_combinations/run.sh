#!/usr/bin/env bash
# Experiment 06_combinations: MiniCache+KIVI, H2O+KIVI, l2norm+KIVI against their parts at equal memory
#   bash experiments/06_combinations/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
DEFAULT_MEASURE="--sequences 0 1 --measure stride=16"
source "$(dirname "$0")/../common.sh"
run_standard_experiment
