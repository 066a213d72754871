#!/usr/bin/env bash
# Experiment 04_skvq_vs_kivi: SKVQ vs KIVI at equal average bits; reorder, clip and window ablations
#   bash experiments/04_skvq_vs_kivi/run.sh      (KVSIM_TRACES=dir to keep the traces elsewhere)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_standard_experiment
