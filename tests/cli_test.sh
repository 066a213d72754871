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
expect_fail 2 "unknown policy 'nope'.*valid policies: full" -- "$KVSIM" replay -t "$WORK/t.h5" -p nope -o "$WORK/bad.h5"
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
expect_fail 1 "CUDA" -- "$KVSIM" replay -t "$WORK/t.h5" -p full --device cuda -o "$WORK/bad.h5"
expect_fail 2 "unknown command" -- "$KVSIM" frobnicate
expect_fail 2 "required" -- "$KVSIM" replay -p full
[ -e "$WORK/bad.h5" ] && fail "a failed run left a results file" || ok

echo "cli: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
