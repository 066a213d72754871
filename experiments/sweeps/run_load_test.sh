#!/usr/bin/env bash
# Load test of `kvsim sweep` (docs/sweeps.md): experiments/sweeps/load_test.yaml
# (52 policy configurations) over the embedded SmolLM2 trace -- or a synthetic
# default trace when trace/data/smollm2_default.h5 is absent -- at 1 and 2 MPI
# ranks, one thread per rank. Prints wall times, the speed-up, the per-unit cost
# spread and the share of time spent reading the trace; checks that both runs
# wrote identical results.
#   bash experiments/sweeps/run_load_test.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${1:-build}"
[ -x "$BUILD/sim/kvsim" ] || bash .ci/setup.sh "$BUILD" >/dev/null
KVSIM="$BUILD/sim/kvsim"
SWEEP=experiments/sweeps/load_test.yaml
OUT=results/sweeps/load_test
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1

TRACE_ARGS=()
if [ -f trace/data/smollm2_default.h5 ]; then
  echo "trace: trace/data/smollm2_default.h5 (embedded SmolLM2-135M-Instruct trace)"
else
  "$KVSIM" synth --preset default --out "$OUT/synthetic_default.h5" >/dev/null
  TRACE_ARGS=(--trace "$OUT/synthetic_default.h5")
  echo "trace: $OUT/synthetic_default.h5 (synthetic default: the embedded trace is absent)"
fi
"$KVSIM" sweep "$SWEEP" "${TRACE_ARGS[@]}" --dry-run --ranks 2 | grep -E "^(runs|units|plan|max/ideal)"

for n in 1 2; do
  rm -rf "$OUT/r$n.h5" "$OUT/r$n.h5.ckpt"
  start=$(date +%s%N)
  mpirun --allow-run-as-root -np "$n" "$KVSIM" sweep "$SWEEP" "${TRACE_ARGS[@]}" --threads 1 -q \
    -o "$OUT/r$n.h5"
  echo $(($(date +%s%N) - start)) >"$OUT/wall_ns.$n"
done
# What two cores give here: one CPU-bound process alone, then two at once.
spin='x = 0
for i in range(12_000_000): x += i'
start=$(date +%s%N); python3 -c "$spin"; echo $(($(date +%s%N) - start)) >"$OUT/spin_ns.1"
start=$(date +%s%N); python3 -c "$spin" & python3 -c "$spin"; wait
echo $(($(date +%s%N) - start)) >"$OUT/spin_ns.2"
python3 tests/mpi/compare_results.py "$OUT/r1.h5" "$OUT/r2.h5" &&
  echo "results at 1 and 2 ranks: identical (bit for bit, /summary/seconds and /sweep excluded)"

python3 - "$OUT" <<'PY'
import sys
import h5py
import numpy as np

out = sys.argv[1]
walls, runs = {}, {}
for n in (1, 2):
    walls[n] = int(open(f"{out}/wall_ns.{n}").read()) / 1e9
    with h5py.File(f"{out}/r{n}.h5", "r") as f:
        sw = f["sweep"]
        runs[n] = {
            "wall": float(sw.attrs["wall_seconds"]),
            "units": {k: sw["units"][k][()] for k in sw["units"]},
            "ranks": {k: sw["ranks"][k][()] for k in sw["ranks"]},
            "configs": len(sw["configs/spec"]),
        }
r1 = runs[1]
spin = {n: int(open(f"{out}/spin_ns.{n}").read()) / 1e9 for n in (1, 2)}
print(f"\nmachine: two CPU-bound processes at once run {2 * spin[1] / spin[2]:.2f}x the throughput "
      f"of one ({spin[1]:.2f} s alone, {spin[2]:.2f} s for two): the speed-up ceiling here")
print(f"configs: {r1['configs']}, units: {len(r1['units']['seconds'])}")
print("| ranks | wall (mpirun) | wall (in kvsim) | speed-up (mpirun) | speed-up (in kvsim) |")
print("|---|---|---|---|---|")
for n in (1, 2):
    print(f"| {n} | {walls[n]:.2f} s | {runs[n]['wall']:.2f} s | {walls[1] / walls[n]:.2f}x "
          f"| {r1['wall'] / runs[n]['wall']:.2f}x |")

secs = r1["units"]["seconds"]
cost = r1["units"]["estimated_cost"]
print(f"\nper-unit seconds (1 rank): min {secs.min() * 1e3:.2f} ms, median {np.median(secs) * 1e3:.2f} ms, "
      f"p95 {np.percentile(secs, 95) * 1e3:.2f} ms, max {secs.max() * 1e3:.2f} ms "
      f"(max/min {secs.max() / secs.min():.0f}x); sum {secs.sum():.2f} s")
print(f"cost model: correlation of estimated cost and measured seconds {np.corrcoef(cost, secs)[0, 1]:.3f}, "
      f"{secs.sum() / cost.sum() * 1e9:.3f} s per 1e9 cost units")
for n in (1, 2):
    r = runs[n]["ranks"]
    busy = r["validate_seconds"] + r["work_seconds"]
    io = r["validate_seconds"] + r["io_seconds"]
    print(f"\n{n} rank(s): trace I/O {io.sum():.3f} s of {busy.sum():.2f} s rank time = "
          f"{100 * io.sum() / busy.sum():.1f}% (value check {r['validate_seconds'].sum():.3f} s, "
          f"block reads {r['io_seconds'].sum():.3f} s); exact attention {r['exact_seconds'].sum():.3f} s, "
          f"checkpoint appends {r['checkpoint_seconds'].sum():.3f} s (+ fsync {r['fsync_seconds'].sum():.3f} s "
          f"in the background), units {r['unit_seconds'].sum():.2f} s")
    for i in range(len(r["rank"])):
        print(f"   rank {r['rank'][i]}: {r['units'][i]} units, {r['blocks'][i]} blocks, busy {busy[i]:.2f} s, "
              f"estimated cost {r['estimated_cost'][i]:.3g}")
    if len(busy) > 1:
        print(f"   measured imbalance (max/mean busy time): {busy.max() / busy.mean():.3f}")
        # The plan's balance without contention: each rank's units timed in the 1-rank run.
        rank_of = runs[n]["units"]["rank"]
        alone = np.array([secs[rank_of == k].sum() for k in range(len(busy))])
        print(f"   the same units timed alone (1-rank run): {', '.join(f'{x:.2f} s' for x in alone)}"
              f" -> plan imbalance {alone.max() / alone.mean():.3f}")
    gather = runs[n]
    print(f"   rank 0 gather {float(h5py.File(f'{out}/r{n}.h5')['sweep'].attrs['gather_seconds']):.3f} s")
PY
