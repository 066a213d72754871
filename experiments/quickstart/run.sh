#!/usr/bin/env bash
# The README's main job: set up, build the CLI, replay every policy on the
# embedded default trace, print the summary table, and write a report with plots.
#   bash experiments/quickstart/run.sh [trace.h5]
# Builds only the `kvsim` target (no tests, no GPU kernels, no benchmarks) in build/,
# configured as `bash tests/run.sh` configures it, so the test command reuses it; the
# Python package kvsim (docs/python.md) is installed last, once the results are shown.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
step() { echo; echo "== quickstart [$1/5] $2 ($(($(date +%s) - start)) s)"; }

step 1 "set up and build the kvsim CLI (first run: packages if missing, then 1-2 min of compiling on 2 cores)"
# The Python package is installed last (step 5), after the results are on screen.
KVSIM_SKIP_PYTHON_PACKAGE=1 bash .ci/setup.sh build --target kvsim
KVSIM=build/sim/kvsim
OUT=results/quickstart
mkdir -p "$OUT"

TRACE="${1:-}"
if [ -z "$TRACE" ]; then
  if [ -f trace/data/smollm2_default.h5 ]; then
    TRACE=trace/data/smollm2_default.h5          # small real SmolLM2 trace, committed
  else
    TRACE="$OUT/synthetic_default.h5"             # deterministic synthetic default
    $KVSIM synth --preset default --sequences 2 --out "$TRACE"
  fi
fi

step 2 "the trace: $TRACE"
# The metadata block: everything up to the first blank line (the sequence list included).
$KVSIM inspect "$TRACE" | sed -n '1,/^$/p'

step 3 "replay every policy of experiments/quickstart/policies.cfg"
$KVSIM replay --trace "$TRACE" --config experiments/quickstart/policies.cfg \
  --out "$OUT/results.h5"

step 4 "report: tables and plots"
python3 analysis/kvsim_report.py "$OUT/results.h5" --out "$OUT/report" --quiet
# The plots the report shows, as its index links them.
plots=$({ grep -oE '\]\([A-Za-z0-9_.-]+\.png\)' "$OUT/report/index.md" || true; } | sed -E 's/^\]\(//; s/\)$//' |
  awk '!seen[$0]++' | paste -sd' ' -)
echo "report: $OUT/report/index.md"
echo "plots:  $plots (in $OUT/report/)"

step 5 "install the Python package kvsim (docs/python.md; compiles its extension, ~1-2 min on 2 cores)"
bash .ci/install_python_package.sh
echo "quickstart: done in $(($(date +%s) - start)) s"
