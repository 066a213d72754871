#!/usr/bin/env bash
# The README's main job: set up, build, replay every policy on the embedded
# default trace, print the summary table, and write a report with plots.
#   bash experiments/quickstart/run.sh [trace.h5]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash .ci/setup.sh build >/dev/null
OUT=results/quickstart
mkdir -p "$OUT"

TRACE="${1:-}"
if [ -z "$TRACE" ]; then
  if [ -f trace/data/smollm2_default.h5 ]; then
    TRACE=trace/data/smollm2_default.h5          # small real SmolLM2 trace, committed
  else
    TRACE="$OUT/synthetic_default.h5"             # deterministic synthetic default
    build/sim/kvsim synth --preset default --sequences 2 --out "$TRACE"
  fi
fi

build/sim/kvsim inspect "$TRACE" | sed -n 1,10p
build/sim/kvsim replay --trace "$TRACE" --config experiments/quickstart/policies.cfg \
  --out "$OUT/results.h5"
python3 analysis/kvsim_report.py "$OUT/results.h5" --out "$OUT/report" --quiet
echo
echo "report: $OUT/report/index.md (plots: pareto.png, error_vs_step.png, per_layer.png)"
