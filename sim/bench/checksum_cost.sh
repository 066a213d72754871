#!/usr/bin/env bash
# Cost of the checksums (Fletcher-32 on every chunked dataset + the HDF5 1.10 checksummed
# metadata) on reading and writing traces: each trace is written in both layouts by
# trace/capture/add_checksums.py (h5py; --without = the layout before checksums), and read
# whole by `kvsim inspect --check` (every layer of every sequence). Best of REPS runs.
#   bash sim/bench/checksum_cost.sh KVSIM_BIN [REPS]          the embedded trace and a
#                                                             4096-token synthetic trace
#   bash sim/bench/checksum_cost.sh KVSIM_BIN 1 --quick       a tiny trace (what the tests run)
# Prints a Markdown table (docs/performance.md, "Checksums").
set -euo pipefail
cd "$(dirname "$0")/../.."
KVSIM="$(realpath "$1")"
REPS="${2:-5}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ "${3:-}" = "--quick" ]; then
  "$KVSIM" synth --preset tiny --out "$WORK/tiny.h5" >/dev/null
  TRACES=("tiny:$WORK/tiny.h5")
else
  "$KVSIM" synth --preset default --tokens 4096 --prompt-len 3072 --out "$WORK/synth4096.h5" \
    >/dev/null
  TRACES=("embedded SmolLM2 (gzip):trace/data/smollm2_default.h5"
          "synthetic 4096 tokens (8 layers, 8/2 heads, d=64):$WORK/synth4096.h5")
fi

# best SECONDS of REPS runs of a command
best() {
  local best_s="" s
  for _ in $(seq "$REPS"); do
    /usr/bin/time -o "$WORK/time" -f "%e" "$@" >/dev/null 2>&1
    s=$(tail -1 "$WORK/time")
    if [ -z "$best_s" ] || awk "BEGIN{exit !($s < $best_s)}"; then best_s=$s; fi
  done
  echo "$best_s"
}

echo "| trace | size without / with | write without / with (s) | read without / with (s) |"
echo "|---|---|---|---|"
for entry in "${TRACES[@]}"; do
  name="${entry%%:*}" path="${entry#*:}"
  w0=$(best python3 trace/capture/add_checksums.py --without "$path" "$WORK/without.h5")
  w1=$(best python3 trace/capture/add_checksums.py "$path" "$WORK/with.h5")
  r0=$(best "$KVSIM" inspect --check "$WORK/without.h5")
  r1=$(best "$KVSIM" inspect --check "$WORK/with.h5")
  s0=$(stat -c %s "$WORK/without.h5") s1=$(stat -c %s "$WORK/with.h5")
  echo "| $name | $s0 / $s1 B | $w0 / $w1 | $r0 / $r1 |"
done
