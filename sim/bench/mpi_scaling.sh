#!/usr/bin/env bash
# 1 vs 2 MPI ranks of `kvsim sweep` on the load test, next to the machine's own two-process
# scaling measured in the same run (issue 11; docs/performance.md, "MPI scaling"):
#
#   bash sim/bench/mpi_scaling.sh [KVSIM] [REPEAT]
#
# Per repetition, interleaved: the sweep (experiments/sweeps/load_test.yaml, the embedded
# trace, --threads 1) under `mpirun -np 1` and `-np 2`; then a plain CPU-bound process (a
# `kvsim replay -p full` of the 4096-token synthetic trace, 1 thread) alone and two of them at
# once. Prints each wall time and the min / median speed-ups: sweep 1-rank / 2-rank time, and
# plain 2 x alone / both-at-once time.
set -euo pipefail
cd "$(dirname "$0")/../.."
KVSIM="${1:-build/sim/kvsim}"
REPEAT="${2:-3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$KVSIM" synth -o "$WORK/synth.h5" --tokens 4096 --prompt-len 4000 >/dev/null

now() { date +%s.%N; }
sweep() {
  rm -rf "$WORK/s.h5" "$WORK/s.h5.ckpt"
  mpirun --allow-run-as-root -np "$1" "$KVSIM" sweep experiments/sweeps/load_test.yaml \
    --threads 1 -q --out "$WORK/s.h5" >/dev/null 2>&1
}
plain() { "$KVSIM" replay -t "$WORK/synth.h5" -p full --threads 1 -q -o "$WORK/p$1.h5" >/dev/null; }

for r in $(seq "$REPEAT"); do
  t0=$(now); sweep 1; t1=$(now); sweep 2; t2=$(now)
  plain a; t3=$(now); plain b & plain c & wait; t4=$(now)
  echo "$t0 $t1 $t2 $t3 $t4"
done | python3 -c '
import statistics, sys
rows = [[float(x) for x in line.split()] for line in sys.stdin]
one = [r[1] - r[0] for r in rows]; two = [r[2] - r[1] for r in rows]
alone = [r[3] - r[2] for r in rows]; both = [r[4] - r[3] for r in rows]
for name, v in (("sweep, 1 rank", one), ("sweep, 2 ranks", two),
                ("plain process alone", alone), ("two plain processes", both)):
    print(f"{name}: " + " ".join(f"{x:.2f}" for x in v) + " s")
sweep_up = [a / b for a, b in zip(one, two)]
plain_up = [2 * a / b for a, b in zip(alone, both)]
print(f"sweep speed-up 1 -> 2 ranks: min {min(sweep_up):.2f} median {statistics.median(sweep_up):.2f}")
print(f"plain 2-process speed-up:    min {min(plain_up):.2f} median {statistics.median(plain_up):.2f}")
'
