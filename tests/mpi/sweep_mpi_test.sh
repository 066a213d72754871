#!/usr/bin/env bash
# End-to-end tests of `kvsim sweep` under MPI (registered in ctest by
# tests/mpi/CMakeLists.txt):
#   sweep_mpi_test.sh identical KVSIM MPIEXEC   same results at 1, 2, 4 ranks and
#                                              as a singleton; equal to kvsim replay
#   sweep_mpi_test.sh resume    KVSIM MPIEXEC SWEEP_KILL
#                                              kill -9 a rank mid-sweep, --resume
#   sweep_mpi_test.sh badinput  KVSIM MPIEXEC   bad spec/trace refused by every rank
# SWEEP_KILL is tests/mpi/sweep_kill.cc: `kvsim sweep` that SIGKILLs rank
# KVSIM_SWEEP_TEST_KILL_RANK (default 0) after it checkpoints its
# KVSIM_SWEEP_TEST_KILL_AFTER-th unit.
# Traces are tiny synthetic ones (kvsim synth --preset tiny).
set -u
MODE="$1"
KVSIM="$(realpath "$2")"
MPIEXEC="${3:-mpirun}"
SWEEP_KILL="$(realpath "${4:-sweep_kill}")"
HERE="$(cd "$(dirname "$0")" && pwd)"
COMPARE="python3 $HERE/compare_results.py"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# Open MPI as root in a container, more ranks than cores, ranks that wait yield the CPU.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
mpi() { local n="$1"; shift; "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$n" "$@"; }

failures=0
passes=0
ok() { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# info FILE: sets ranks, units_total, units_computed, units_from_checkpoint, distinct_ranks.
info() { eval "$(python3 "$HERE/compare_results.py" --sweep-info "$1")"; }

"$KVSIM" synth --preset tiny --sequences 3 --out t1.h5 >/dev/null || fail "synth t1"
"$KVSIM" synth --preset tiny --seed 5 --sequences 2 --sliding-window 24 --out t2.h5 >/dev/null ||
  fail "synth t2"
POLICIES='  - full
  - spec: "uniform:bits={bits},group={group}"
    grid: {bits: [2, 4], group: [16, 32]}
  - spec: "minicache:gamma={gamma}+uniform:bits=4"
    grid: {gamma: [0.05, 0.2]}
  - spec: "streamingllm:sinks=4,window={w}+uniform:bits=4"
    grid: {w: {from: 8, to: 32, factor: 2}}
  - mikv:lo_bits=3'
printf 'traces: [t1.h5, t2.h5]\nseed: 11\nmeasure: auto\npolicies:\n%s\n' "$POLICIES" >sweep.yaml

case "$MODE" in
identical)
  "$KVSIM" sweep sweep.yaml -o single.h5 >single.log 2>&1 && ok || fail "singleton: $(cat single.log)"
  for n in 1 2 4; do
    mpi "$n" "$KVSIM" sweep sweep.yaml -o "r$n.h5" --threads 1 >"r$n.log" 2>&1 && ok ||
      fail "np $n: $(cat "r$n.log")"
    info "r$n.h5"
    [ "$ranks" = "$n" ] && ok || fail "np $n: /sweep ranks attribute"
    [ "$units_computed" = "$units_total" ] && ok || fail "np $n: not every unit computed"
    [ "$distinct_ranks" = "$n" ] && ok || fail "np $n: units computed by $distinct_ranks ranks"
  done
  grep -q "units on 4 rank(s)" r4.log && ok || fail "np 4 summary line: $(cat r4.log)"
  for f in r2.h5 r4.h5 single.h5; do
    $COMPARE r1.h5 "$f" && ok || fail "r1.h5 and $f differ"
  done
  # One trace, plain specs: the sweep equals kvsim replay run for run.
  printf 'trace: t1.h5\nseed: 11\npolicies: [full, "uniform:bits=2,group=16", "minicache:gamma=0.05+uniform:bits=4", mikv]\n' >one.yaml
  mpi 2 "$KVSIM" sweep one.yaml -o one.h5 -q >one.log 2>&1 && ok || fail "one-trace sweep: $(cat one.log)"
  "$KVSIM" replay -t t1.h5 -p full -p uniform:bits=2,group=16 -p 'minicache:gamma=0.05+uniform:bits=4' \
    -p mikv --seed 11 -o replay.h5 -q >replay.log 2>&1 && ok || fail "replay: $(cat replay.log)"
  $COMPARE replay.h5 one.h5 --subset && ok || fail "sweep differs from kvsim replay"
  ;;

resume)
  [ -x "$SWEEP_KILL" ] || { echo "resume needs the sweep_kill binary (4th argument)"; exit 2; }
  mpi 2 "$KVSIM" sweep sweep.yaml -o full.h5 --threads 1 >full.log 2>&1 && ok || fail "full: $(cat full.log)"
  info full.h5
  total=$units_total
  # Rank 1 SIGKILLs itself after checkpointing 3 units; mpirun takes the job down.
  KVSIM_SWEEP_TEST_KILL_AFTER=3 KVSIM_SWEEP_TEST_KILL_RANK=1 \
    mpi 2 "$SWEEP_KILL" sweep.yaml -o res.h5 --threads 1 >kill.log 2>&1 &&
    fail "killed sweep exited 0" || ok
  [ ! -e res.h5 ] && ok || fail "a killed sweep left a results file"
  ls res.h5.ckpt/*.ckpt >/dev/null 2>&1 && ok || fail "no checkpoint files"
  # Without --resume the checkpoint is not silently overwritten.
  "$KVSIM" sweep sweep.yaml -o res.h5 >again.log 2>&1
  [ $? -eq 2 ] && grep -q "pass --resume" again.log && ok || fail "rerun without --resume: $(cat again.log)"
  # A resume of a different sweep (other seed) is refused.
  sed 's/seed: 11/seed: 12/' sweep.yaml >other.yaml
  mpi 2 "$KVSIM" sweep other.yaml -o res.h5 --resume >other.log 2>&1
  [ $? -ne 0 ] && grep -q "different sweep" other.log && ok || fail "foreign resume: $(cat other.log)"
  # A torn record at the end of a file is ignored.
  "$KVSIM" sweep sweep.yaml -o res.h5 --resume --dry-run >dry1.log 2>&1 || fail "dry-run: $(cat dry1.log)"
  done_units=$(sed -n 's/^checkpoint: .*: \([0-9]*\) of \([0-9]*\) units done.*/\1/p' dry1.log)
  [ -n "$done_units" ] && [ "$done_units" -ge 3 ] && [ "$done_units" -lt "$total" ] && ok ||
    fail "checkpointed units: '$done_units' of $total ($(cat dry1.log | tail -3))"
  first=$(ls res.h5.ckpt/*.ckpt | head -1)
  printf 'KVSC\001\000\000\000torn-record' >>"$first"
  "$KVSIM" sweep sweep.yaml -o res.h5 --resume --dry-run >dry2.log 2>&1
  grep -q "$done_units of $total units done" dry2.log && ok || fail "torn record changed the count: $(cat dry2.log | tail -3)"
  grep -Eq "[1-9][0-9]* torn tail" dry2.log && ok || fail "torn record not reported: $(cat dry2.log | tail -3)"
  # A temporary results file of a rank 0 killed during the final write (its pid is dead).
  dead=$(sh -c 'echo $$')
  cp full.h5 "res.h5.tmp.$dead"
  # Resume on another rank count: only the missing units are computed.
  mpi 4 "$KVSIM" sweep sweep.yaml -o res.h5 --resume --threads 1 >resume.log 2>&1 && ok ||
    fail "resume: $(cat resume.log)"
  [ ! -e "res.h5.tmp.$dead" ] && grep -q "removed 'res.h5.tmp.$dead'" resume.log && ok ||
    fail "the stale temporary was not removed on resume: $(ls; tail -3 resume.log)"
  grep -q "resume: $done_units of $total units" resume.log && ok || fail "resume line: $(cat resume.log | tail -4)"
  info res.h5
  [ "$units_from_checkpoint" = "$done_units" ] && ok || fail "units_from_checkpoint"
  [ "$units_computed" = "$((total - done_units))" ] && ok ||
    fail "units_computed $units_computed != $total - $done_units"
  $COMPARE full.h5 res.h5 && ok || fail "resumed results differ from the uninterrupted run"
  [ ! -e res.h5.ckpt ] && ok || fail "checkpoint directory left after success"
  # A singleton killed after exactly 5 units, resumed on 2 ranks.
  KVSIM_SWEEP_TEST_KILL_AFTER=5 "$SWEEP_KILL" sweep.yaml -o solo.h5 >solo.log 2>&1
  [ $? -eq 137 ] && ok || fail "singleton not killed by SIGKILL: $(cat solo.log)"
  mpi 2 "$KVSIM" sweep sweep.yaml -o solo.h5 --resume >solo2.log 2>&1 && ok || fail "resume solo: $(cat solo2.log)"
  info solo.h5
  [ "$units_from_checkpoint" = "5" ] && ok || fail "solo: expected 5 units from checkpoint"
  $COMPARE full.h5 solo.h5 && ok || fail "solo resume differs"
  ;;

badinput)
  # expect_all_ranks CODE PATTERN LOG: non-zero exit, the message on both ranks, nothing written.
  check() {
    local rc="$1" pattern="$2" log="$3"
    [ "$rc" -ne 0 ] && ok || fail "$log: exit 0"
    for r in 0 1; do
      grep -q "^\[rank $r\] kvsim: error: .*$pattern" "$log" && ok || fail "$log: rank $r lacks /$pattern/: $(cat "$log")"
    done
    [ ! -e bad.h5 ] && [ ! -e bad.h5.ckpt ] && ok || fail "$log: output written"
  }
  printf 'traces: [t1.h5]\npolicies:\n  - spec: "uniform:bits={b}"\n    grid: {b: [2, 12]}\n' >spec.yaml
  mpi 2 "$KVSIM" sweep spec.yaml -o bad.h5 >spec.log 2>&1; check $? "out of range" spec.log
  printf 'traces: [t1.h5, missing.h5]\npolicies: [full]\n' >missing.yaml
  mpi 2 "$KVSIM" sweep missing.yaml -o bad.h5 >missing.log 2>&1; check $? "cannot open 'missing.h5'" missing.log
  cp t1.h5 nan.h5
  python3 -c "
import h5py, numpy as np
with h5py.File('nan.h5', 'r+') as f:
    d = f['sequences/000002/v']; a = d[()]; a[3, 1, 40, 7] = np.inf; d[...] = a" || fail "make nan trace"
  printf 'traces: [nan.h5]\npolicies: [full, uniform]\n' >nan.yaml
  mpi 2 "$KVSIM" sweep nan.yaml -o bad.h5 >nan.log 2>&1; check $? "non-finite" nan.log
  printf 'traces: [t1.h5]\npolicies:\n  - spec: "uniform:group={g}"\n    grid: {g: [16, 24]}\n' >div.yaml
  mpi 2 "$KVSIM" sweep div.yaml -o bad.h5 >div.log 2>&1; check $? "t1.h5.*divide" div.log
  # A singleton prints the plain CLI message and the CLI exit code.
  "$KVSIM" sweep spec.yaml -o bad.h5 >solo.log 2>&1
  [ $? -eq 2 ] && grep -q "^kvsim: error: .*out of range" solo.log && ok || fail "singleton: $(cat solo.log)"
  ;;
*)
  echo "unknown mode $MODE"
  exit 2
  ;;
esac

echo "sweep_mpi_test $MODE: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
