#!/usr/bin/env bash
# What `kvsim replay` and `kvsim sweep` print and record beyond the numbers (issue 17):
#   cli_outputs_test.sh replay KVSIM REPO            stages that never act (warning and the
#                                                    runs' `idle_stages`), the summary table's
#                                                    order and number format
#   cli_outputs_test.sh sweep  KVSIM REPO MPIEXEC    the same warnings from a sweep; sweep
#                                                    --measure/--sequences (and the YAML keys)
#                                                    equal to kvsim replay's; the progress bar
#                                                    through mpirun when its stderr is a terminal
# The sweep mode runs MPI (ctest name cli_mpi_outputs: leak checking off under ASan).
set -u
MODE="$1"
KVSIM="$(realpath "$2")"
REPO="$(realpath "$3")"
MPIEXEC="${4:-mpirun}"
TRACE="$REPO/trace/data/smollm2_default.h5"   # 3 sequences, prompts of 171-184 tokens
COMPARE="python3 $REPO/tests/mpi/compare_results.py"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
failures=0
passes=0
ok() { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# idle FILE RUN: the run's idle_stages attribute.
idle() { python3 -c "import h5py,sys; print(h5py.File(sys.argv[1])['runs'][sys.argv[2]].attrs['idle_stages'])" "$1" "$2"; }

# The issue's examples on the embedded trace: SKVQ's 128-token fp16 window covers the whole
# cache SnapKV keeps (36 tokens); MiKV's important set is everything H2O keeps. The third
# composition acts in every stage (a 32-token window).
IDLE1='snapkv+skvq:group=32'
IDLE2='h2o+mikv'
ACTIVE='snapkv+skvq:group=32,window=32'

case "$MODE" in
replay)
  "$KVSIM" replay -t "$TRACE" -p "$IDLE1" -p "$IDLE2" -p "$ACTIVE" -p snapkv -o r.h5 \
    >out.txt 2>err.txt && ok || fail "replay: $(cat err.txt)"
  grep -q "warning: run 0 '$IDLE1': stage skvq never acted over the whole run (stored no entry below 16 bits)" err.txt &&
    ok || fail "no warning for $IDLE1: $(cat err.txt)"
  grep -q "warning: run 1 '$IDLE2': stage mikv never acted" err.txt && ok || fail "no warning for $IDLE2"
  grep -q "run 2 " err.txt && fail "a warning for $ACTIVE: $(cat err.txt)" || ok
  [ "$(grep -c warning err.txt)" -eq 2 ] && ok || fail "expected 2 warnings: $(cat err.txt)"
  [ "$(idle r.h5 0000)" = "skvq" ] && ok || fail "run 0 idle_stages: $(idle r.h5 0000)"
  [ "$(idle r.h5 0001)" = "mikv" ] && ok || fail "run 1 idle_stages: $(idle r.h5 0001)"
  [ -z "$(idle r.h5 0002)" ] && ok || fail "run 2 idle_stages: $(idle r.h5 0002)"
  # -q keeps the warnings (they are not the table).
  "$KVSIM" replay -t "$TRACE" -p "$IDLE1" -o q.h5 -q 2>qerr.txt
  grep -q "stage skvq never acted" qerr.txt && ok || fail "-q dropped the warning"

  # The table: sorted by memory ratio (ascending, ties in run order), `run` first; the
  # ratios printed are /summary's (4 significant digits).
  "$KVSIM" replay -t "$TRACE" -p full -p uniform:bits=2 -p streamingllm:window=64 -p uniform:bits=4 \
    -p snapkv:ratio=0.25 -p oracle:ratio=0.25 -o s.h5 --sequences 0 >table.txt 2>&1 || fail "replay: $(cat table.txt)"
  col=$(awk -F'|' '/^\| run \|/ { for (i = 2; i <= NF; ++i) if ($i ~ /memory vs fp16/) print i; exit }' table.txt)
  awk -F'|' -v c="$col" '/^\| [0-9]+ \|/ { gsub(/ /, "", $2); gsub(/ /, "", $c); print $2, $c }' table.txt >rows.txt
  [ "$(wc -l <rows.txt)" -eq 6 ] && ok || fail "table rows: $(cat table.txt)"
  python3 - s.h5 rows.txt <<'PY' && ok || fail "table order differs from /summary sorted by memory_ratio: $(cat table.txt)"
import sys, h5py, numpy as np
ratio = h5py.File(sys.argv[1])["summary"]["memory_ratio"][:]
rows = [line.split() for line in open(sys.argv[2])]
expected = sorted(range(len(ratio)), key=lambda r: (ratio[r], r))
assert [int(r) for r, _ in rows] == expected, (rows, expected)
assert all(abs(float(v) - ratio[int(r)]) <= 5e-4 * ratio[int(r)] for r, v in rows), rows
PY
  # One number format: no column shows more than 6 significant digits (cosine had 6 always).
  awk -F'|' '/^\| [0-9]+ \|/ { for (i = 4; i <= NF - 1; ++i) { v = $i; gsub(/[ .-]|e.*/, "", v); sub(/^0+/, "", v); if (length(v) > 6) print $i } }' table.txt >long.txt
  [ ! -s long.txt ] && ok || fail "values with more than 6 digits: $(cat long.txt)"
  grep -qE '\| 0\.[0-9]{6,} \|' table.txt && fail "6-decimal value in the table: $(cat table.txt)" || ok
  ;;
sweep)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
  export OMPI_MCA_btl_vader_single_copy_mechanism=none
  mpi() { local n="$1"; shift; "$MPIEXEC" --allow-run-as-root --oversubscribe -np "$n" "$@"; }
  printf 'traces: [%s]\npolicies: ["%s", "%s", "%s"]\n' "$TRACE" "$IDLE1" "$IDLE2" "$ACTIVE" >s.yaml
  # --measure and --sequences replace the file's; the results equal kvsim replay's.
  mpi 2 "$KVSIM" sweep s.yaml -o sw.h5 --measure stride=5 --sequences 0 2 --threads 1 >sw.txt 2>swerr.txt &&
    ok || fail "sweep: $(cat sw.txt swerr.txt)"
  "$KVSIM" replay -t "$TRACE" -p "$IDLE1" -p "$IDLE2" -p "$ACTIVE" --measure stride=5 --sequences 0 2 \
    -o rp.h5 -q 2>/dev/null && ok || fail "replay"
  $COMPARE rp.h5 sw.h5 --subset && ok || fail "sweep --measure/--sequences differs from kvsim replay"
  # Not a tautology: other options give other results.
  "$KVSIM" replay -t "$TRACE" -p "$IDLE1" -p "$IDLE2" -p "$ACTIVE" -o rdefault.h5 -q 2>/dev/null
  $COMPARE rdefault.h5 sw.h5 --subset >/dev/null 2>&1 && fail "the options changed nothing" || ok
  # The YAML keys of the same names do the same.
  printf 'traces: [%s]\nmeasure: stride=5\nsequences: [0, 2]\npolicies: ["%s", "%s", "%s"]\n' \
    "$TRACE" "$IDLE1" "$IDLE2" "$ACTIVE" >y.yaml
  "$KVSIM" sweep y.yaml -o y.h5 -q 2>/dev/null && ok || fail "sweep y.yaml"
  $COMPARE rp.h5 y.h5 --subset && ok || fail "sweep measure/sequences keys differ from kvsim replay"
  # The sweep warns as replay does, after its table, and records idle_stages.
  grep -q "warning: run 0 '$IDLE1': stage skvq never acted" swerr.txt && ok || fail "sweep warning: $(cat swerr.txt)"
  grep -q "warning: run 1 '$IDLE2': stage mikv never acted" swerr.txt && ok || fail "sweep warning 2"
  grep -q "run 2 " swerr.txt && fail "sweep warned for $ACTIVE" || ok
  [ "$(idle sw.h5 0000)" = "skvq" ] && ok || fail "sweep run 0 idle_stages: $(idle sw.h5 0000)"
  # Bad values of the new options.
  "$KVSIM" sweep s.yaml -o bad.h5 --measure sometimes >bad.txt 2>&1
  [ $? -eq 2 ] && grep -q -- "--measure" bad.txt && ok || fail "bad --measure: $(cat bad.txt)"
  "$KVSIM" sweep s.yaml -o bad.h5 --sequences 0 0 >bad.txt 2>&1
  [ $? -eq 2 ] && grep -q "twice" bad.txt && ok || fail "duplicate --sequences: $(cat bad.txt)"
  "$KVSIM" sweep s.yaml -o bad.h5 --sequences 7 >bad.txt 2>&1
  [ $? -ne 0 ] && grep -q "out of range" bad.txt && ok || fail "--sequences 7: $(cat bad.txt)"
  [ -e bad.h5 ] && fail "a refused sweep wrote results" || ok

  # The progress bar: by default through mpirun when mpirun's stderr is a terminal (script(1)
  # gives it one), not when it is a pipe or a file.
  if command -v script >/dev/null; then
    script -qec "$MPIEXEC --allow-run-as-root --oversubscribe -np 2 $KVSIM sweep s.yaml -o tty.h5 --threads 1" \
      /dev/null >tty.txt 2>&1 && ok || fail "sweep under script: $(cat tty.txt)"
    grep -q 'sweep \[#' tty.txt && ok || fail "no progress bar through mpirun on a terminal: $(cat tty.txt)"
  else
    echo "note: script(1) missing, progress-bar-on-a-terminal check skipped"
  fi
  grep -q 'sweep \[' swerr.txt && fail "a progress bar on a pipe: $(cat swerr.txt)" || ok
  mpi 2 "$KVSIM" sweep s.yaml -o forced.h5 --threads 1 --progress >forced.txt 2>&1
  grep -q 'sweep \[#' forced.txt && ok || fail "--progress drew nothing"
  ;;
*)
  echo "usage: $0 replay|sweep KVSIM REPO [MPIEXEC]"
  exit 2
  ;;
esac

echo "cli outputs ($MODE): $passes passed, $failures failed"
[ "$failures" -eq 0 ]
