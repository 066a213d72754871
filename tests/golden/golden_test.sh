#!/usr/bin/env bash
# Bit-identical results across builds and machines (docs/replay.md, "Bit-identical
# results"): replays a few policies over the embedded SmolLM2 trace and compares every
# dataset and attribute of the results, to the byte, with tests/golden/results.h5,
# written once by a reference build. The policies cover every kind of arithmetic a
# result goes through: attention and metrics (full, h2o), the quantizers (uniform, KIVI,
# SKVQ's clipped quantizer, MiKV at 4 bits), MiniCache's SLERP merge, a seeded
# eviction (random), and KVQuant's calibration and RoPE rotation, GEAR's power iteration,
# QJL's projection, FP8 rounding and transformers' QuantizedCache (HQQ, quanto).
#
#   bash tests/golden/golden_test.sh check KVSIM    exit 0: identical (ctest `golden_results`)
#   bash tests/golden/golden_test.sh write KVSIM    regenerate results.h5 after an intended
#                                                   change of results (say so in the commit)
set -euo pipefail
MODE="$1"
KVSIM="$(realpath "$2")"
cd "$(dirname "$0")/../.."
TRACE=trace/data/smollm2_default.h5
GOLDEN=tests/golden/results.h5
if [ ! -f "$TRACE" ]; then
  echo "golden_test: $TRACE is absent; nothing to compare"
  exit 0
fi
replay() {
  "$KVSIM" replay -t "$TRACE" --measure last=4 --sequences 0 --seed 7 -q -o "$1" \
    -p full -p uniform:bits=2,k_axis=channel -p kivi:bits=2,residual=32 \
    -p skvq:k_bits=2,v_bits=2,group=32,window=32 -p mikv:hi_bits=4,lo_bits=3 \
    -p minicache -p h2o:heavy=0.125,recent=0.125 -p random:ratio=0.25 \
    -p kvquant -p gear:group=32,buffer=32 -p qjl:buffer=32 -p fp8:scale=head \
    -p hf_quantized:backend=hqq,residual=32 -p hf_quantized:backend=quanto,residual=32
}
case "$MODE" in
  write) replay "$GOLDEN" && echo "wrote $GOLDEN" ;;
  check)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    replay "$work/now.h5"
    python3 tests/mpi/compare_results.py "$GOLDEN" "$work/now.h5" --subset
    echo "golden results: bit-identical"
    ;;
  *) sed -n 2,12p "$0"; exit 2 ;;
esac
