#!/usr/bin/env bash
# Bit-identity check of a refactoring: replays the quickstart policies and runs the load-test
# sweep with one kvsim binary, then compares every dataset and attribute with the same files
# made by another binary (tests/mpi/compare_results.py --subset: every object of the baseline
# must exist and be equal to the byte in the new file; new columns, such as a new metric, may
# be added; the wall-time column and the /sweep bookkeeping are excluded).
#
#   bash tests/bit_identity.sh make KVSIM_BIN OUT_DIR           # write OUT_DIR/{quickstart,load_test}.h5
#   bash tests/bit_identity.sh compare BASE_DIR NEW_DIR         # exit 0: identical
#   bash tests/bit_identity.sh BEFORE_BIN AFTER_BIN [WORK_DIR]   # both of the above
#
# The trace is the embedded SmolLM2 trace; the sweep runs at one rank and one thread (the
# MPI tests check rank-count determinism separately).
set -euo pipefail
cd "$(dirname "$0")/.."
TRACE=trace/data/smollm2_default.h5

make_results() {
  local bin="$1" out="$2"
  mkdir -p "$out"
  rm -rf "$out/quickstart.h5" "$out/load_test.h5" "$out/load_test.h5.ckpt"
  "$bin" replay --trace "$TRACE" --config experiments/quickstart/policies.cfg \
    --out "$out/quickstart.h5" >/dev/null
  "$bin" sweep experiments/sweeps/load_test.yaml --trace "$TRACE" --threads 1 -q \
    --out "$out/load_test.h5" >/dev/null
}

compare_results() {
  local base="$1" new="$2" rc=0
  for f in quickstart.h5 load_test.h5; do
    if python3 tests/mpi/compare_results.py "$base/$f" "$new/$f" --subset; then
      echo "bit-identical: $f"
    else
      echo "DIFFERENT: $f"
      rc=1
    fi
  done
  return $rc
}

case "${1:-}" in
  make) make_results "$2" "$3" ;;
  compare) compare_results "$2" "$3" ;;
  "" | -h | --help) sed -n 2,12p "$0" ;;
  *)
    work="${3:-$(mktemp -d)}"
    make_results "$1" "$work/before"
    make_results "$2" "$work/after"
    compare_results "$work/before" "$work/after"
    ;;
esac
