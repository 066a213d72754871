#!/usr/bin/env bash
# End-to-end checks of the kvsim command line: good runs succeed, and every
# kind of bad input exits non-zero with a clear message and no results file.
set -u
KVSIM="$1"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# shellcheck source=tests/cli_lib.sh
source "$(dirname "$0")/cli_lib.sh"

"$KVSIM" synth --preset tiny --out "$WORK/t.h5" >/dev/null || fail "synth"
[ -f "$WORK/t.h5" ] && ok || fail "synth wrote nothing"

"$KVSIM" replay -t "$WORK/t.h5" -p full -p 'uniform:bits=2' -p 'streamingllm:window=20+uniform:bits=4' \
  -o "$WORK/r.h5" >"$WORK/out.txt" 2>&1 && ok || fail "replay: $(cat "$WORK/out.txt")"
grep -q "| uniform:bits=2 |" "$WORK/out.txt" && ok || fail "summary table missing"
[ -f "$WORK/r.h5" ] && ok || fail "no results file"
ls "$WORK" | grep -q tmp && fail "temporary file left behind" || ok

"$KVSIM" policies | grep -q "streamingllm" && ok || fail "policies list"
"$KVSIM" policies | grep -q "k_axis" && ok || fail "policies params"
"$KVSIM" inspect "$WORK/t.h5" | grep -q "sink mass" && ok || fail "inspect"
"$KVSIM" replay --help | grep -q -- "--measure" && ok || fail "replay --help"

# Config file with the same options.
cat >"$WORK/replay.cfg" <<CFG
trace = $WORK/t.h5
policy = uniform:bits=4
policy = full
out = $WORK/cfg.h5
measure = last=4
CFG
"$KVSIM" replay --config "$WORK/replay.cfg" -q && [ -f "$WORK/cfg.h5" ] && ok || fail "config file"

# Bad input: each exits non-zero, says why, and writes no results.
expect_fail 2 "unknown policy 'nope'.*valid policies: adakv, .*full" -- "$KVSIM" replay -t "$WORK/t.h5" -p nope -o "$WORK/bad.h5"
expect_fail 2 "unknown parameter 'bitz'.*valid keys: bits" -- "$KVSIM" replay -t "$WORK/t.h5" -p uniform:bitz=2 -o "$WORK/bad.h5"
expect_fail 2 "out of range" -- "$KVSIM" replay -t "$WORK/t.h5" -p uniform:bits=12 -o "$WORK/bad.h5"
expect_fail 2 "order evict, merge, quantize" -- "$KVSIM" replay -t "$WORK/t.h5" -p uniform+streamingllm -o "$WORK/bad.h5"
expect_fail 2 "must divide head_dim" -- "$KVSIM" replay -t "$WORK/t.h5" -p uniform:group=48 -o "$WORK/bad.h5"
expect_fail 2 "measured-steps rule" -- "$KVSIM" replay -t "$WORK/t.h5" -p full --measure sometimes -o "$WORK/bad.h5"
expect_fail 1 "cannot open" -- "$KVSIM" replay -t "$WORK/missing.h5" -p full -o "$WORK/bad.h5"
head -c 5000 "$WORK/t.h5" >"$WORK/cut.h5"
expect_fail 1 "corrupt or truncated" -- "$KVSIM" replay -t "$WORK/cut.h5" -p full -o "$WORK/bad.h5"
echo "not hdf5" >"$WORK/text.h5"
expect_fail 1 "not a readable HDF5" -- "$KVSIM" inspect "$WORK/text.h5"
# Without a GPU, --device cuda is a clear error (with one, tests/gpu_equivalence.py runs it).
if ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  expect_fail 1 "CUDA" -- "$KVSIM" replay -t "$WORK/t.h5" -p full --device cuda -o "$WORK/bad.h5"
fi
expect_fail 2 "unknown --device 'tpu'" -- "$KVSIM" replay -t "$WORK/t.h5" -p full --device tpu -o "$WORK/bad.h5"
expect_fail 2 "unknown command" -- "$KVSIM" frobnicate
expect_fail 2 "required" -- "$KVSIM" replay -p full
# `kvsim sweep` initialises MPI, whose allocations LeakSanitizer reports at exit (the
# MPI tests run without leak checking for the same reason).
sweep() { ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" "$KVSIM" sweep "$@"; }

# --- Outputs that are inputs: refused before any work, the input untouched (issue 16).
cp "$WORK/t.h5" "$WORK/t.copy"
mkdir -p "$WORK/sub"
ln "$WORK/t.h5" "$WORK/hard.h5"
ln -s "$WORK/t.h5" "$WORK/sym.h5"
expect_fail 2 "refusing to write results .*same file" -- "$KVSIM" replay -t "$WORK/t.h5" -p full -o "$WORK/t.h5"
expect_fail 2 "refusing to write results .*same file" -- "$KVSIM" replay -t "$WORK/t.h5" -p full -o "$WORK/sub/../t.h5"
expect_fail 2 "refusing to write results .*same file" -- "$KVSIM" replay -t "$WORK/t.h5" -p full -o "$WORK/hard.h5"
expect_fail 2 "refusing to write results .*same file" -- "$KVSIM" replay -t "$WORK/sym.h5" -p full -o "$WORK/t.h5"
expect_fail 2 "refusing to write results .*same file" -- "$KVSIM" replay -t "$WORK/t.h5" -p full -o "$WORK/sym.h5"
expect_fail 2 "refusing to write calibration file .*same file" -- "$KVSIM" calibrate -t "$WORK/t.h5" -o "$WORK/sub/../t.h5"
expect_fail 2 "refusing to write results .*replay.cfg" -- "$KVSIM" replay --config "$WORK/replay.cfg" -o "$WORK/replay.cfg"
"$KVSIM" calibrate -t "$WORK/t.h5" -p skvq:group=16 -o "$WORK/calib.h5" >/dev/null && ok || fail "calibrate"
cp "$WORK/calib.h5" "$WORK/calib.copy"
expect_fail 2 "refusing to write results .*calib.h5" -- "$KVSIM" replay -t "$WORK/t.h5" -p "skvq:group=16,calib=$WORK/calib.h5" -o "$WORK/calib.h5"
printf 'traces: [t.h5]\npolicies: [full]\n' >"$WORK/s.yaml"
if ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  expect_fail 1 "CUDA" -- sweep "$WORK/s.yaml" --device cuda -o "$WORK/bad.h5"
fi
expect_fail 2 "unknown --device 'tpu'" -- sweep "$WORK/s.yaml" --device tpu -o "$WORK/bad.h5"
expect_fail 2 "refusing to write results .*same file" -- sweep "$WORK/s.yaml" -o "$WORK/sub/../t.h5"
expect_fail 2 "refusing to write results .*s.yaml" -- sweep "$WORK/s.yaml" -o "$WORK/s.yaml"
cmp -s "$WORK/t.h5" "$WORK/t.copy" && cmp -s "$WORK/calib.h5" "$WORK/calib.copy" && ok ||
  fail "an input was changed by a refused command"
grep -q "^trace = " "$WORK/replay.cfg" && ok || fail "the config file was replaced"

# --- Output paths checked before any work, with the reason.
expect_fail 2 "results path \(--out\) is empty" -- "$KVSIM" replay -t "$WORK/t.h5" -p full -o ''
expect_fail 2 "trace path \(--out\) is empty" -- "$KVSIM" synth --preset tiny -o ''
# The output is checked first: a corrupt trace is not even opened.
expect_fail 1 "directory '$WORK/nodir' does not exist" -- "$KVSIM" replay -t "$WORK/cut.h5" -p full -o "$WORK/nodir/r.h5"
expect_fail 1 "directory '$WORK/nodir' does not exist" -- "$KVSIM" calibrate -t "$WORK/cut.h5" -o "$WORK/nodir/c.h5"
expect_fail 1 "directory '$WORK/nodir' does not exist" -- "$KVSIM" synth --preset tiny -o "$WORK/nodir/t.h5"
expect_fail 1 "directory '$WORK/nodir' does not exist" -- sweep "$WORK/s.yaml" -o "$WORK/nodir/r.h5"
expect_fail 1 "is a directory" -- "$KVSIM" replay -t "$WORK/t.h5" -p full -o "$WORK/sub"

# --- Temporaries left by a killed writer are removed; a live writer's are kept.
dead=$(sh -c 'echo $$')
touch "$WORK/r2.h5.tmp.$dead" "$WORK/r2.h5.tmp.$$" "$WORK/r2.h5.tmp.x$dead"
"$KVSIM" replay -t "$WORK/t.h5" -p full -o "$WORK/r2.h5" -q 2>"$WORK/stale.txt" && ok || fail "replay with stale temporaries"
[ ! -e "$WORK/r2.h5.tmp.$dead" ] && grep -q "removed '.*r2.h5.tmp.$dead'" "$WORK/stale.txt" && ok ||
  fail "stale temporary of a dead process not removed: $(cat "$WORK/stale.txt")"
[ -e "$WORK/r2.h5.tmp.$$" ] && [ -e "$WORK/r2.h5.tmp.x$dead" ] && ok || fail "a live or foreign temporary was removed"
rm -f "$WORK"/r2.h5*

# --- Limits and values refused with the reason.
expect_fail 2 "sequence 0 is given twice" -- "$KVSIM" replay -t "$WORK/t.h5" -p full --sequences 0 0 -o "$WORK/bad.h5"
expect_fail 2 "sequence 0 is given twice" -- "$KVSIM" calibrate -t "$WORK/t.h5" --sequences 0 0 -o "$WORK/bad.h5"
expect_fail 2 "--seed '-1'" -- "$KVSIM" replay -t "$WORK/t.h5" -p full --seed -1 -o "$WORK/bad.h5"
expect_fail 2 "--seed '18446744073709551616'" -- "$KVSIM" synth --preset tiny --seed 18446744073709551616 -o "$WORK/bad.h5"
expect_fail 2 "--seed '\+1'" -- "$KVSIM" synth --preset tiny --seed +1 -o "$WORK/bad.h5"
"$KVSIM" replay -t "$WORK/t.h5" -p random:budget=8 --seed 18446744073709551615 -q -o "$WORK/seed.h5" && ok || fail "largest seed refused"
expect_fail 2 "the limit is 16 GiB" -- "$KVSIM" synth --tokens 2147483647 -o "$WORK/bad.h5"
expect_fail 2 "unexpected argument 'extra'" -- "$KVSIM" policies extra
expect_fail 2 "unexpected argument 'extra'" -- "$KVSIM" schema --markdown extra
expect_fail 2 "unexpected argument 'extra'" -- "$KVSIM" replay extra -t "$WORK/t.h5" -p full -o "$WORK/bad.h5"
expect_fail 2 "unexpected argument 'extra'" -- "$KVSIM" synth extra -o "$WORK/bad.h5"
expect_fail 2 "unexpected argument 'extra'" -- "$KVSIM" calibrate extra -t "$WORK/t.h5" -o "$WORK/bad.h5"
expect_fail 2 "unexpected argument 'extra'" -- "$KVSIM" version extra
expect_fail 2 "too many positional" -- "$KVSIM" inspect "$WORK/t.h5" extra
expect_fail 2 "too many positional" -- sweep "$WORK/s.yaml" extra -o "$WORK/bad.h5"

# --- Sweep grids are counted before they are expanded (10^9 configurations here).
axis=$(seq -s, 1 1000)
printf 'traces: [t.h5]\npolicies:\n  - spec: "uniform:group={a},bits={b},clip={c}"\n    grid: {a: [%s], b: [%s], c: [%s]}\n' \
  "$axis" "$axis" "$axis" >"$WORK/huge.yaml"
expect_fail 2 "expand to 1000000000 configurations, more than the limit 10000 .*--max-configs" -- \
  sweep "$WORK/huge.yaml" --dry-run
expect_fail 2 "expand to 1000000000 configurations" -- sweep "$WORK/huge.yaml" -o "$WORK/bad.h5"
printf 'traces: [t.h5]\npolicies:\n  - full\n  - spec: "uniform:bits={b}"\n    grid: {b: [2, 3, 4]}\n' >"$WORK/four.yaml"
expect_fail 2 "expand to 4 configurations, more than the limit 3" -- sweep "$WORK/four.yaml" --dry-run --max-configs 3
sweep "$WORK/four.yaml" --dry-run --max-configs 4 | grep -q "configs (4)" && ok || fail "--max-configs 4"
[ -e "$WORK/bad.h5" ] && fail "a failed run left a results file" || ok

echo "cli: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
