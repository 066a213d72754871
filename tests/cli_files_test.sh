#!/usr/bin/env bash
# End-to-end checks of kvsim on damaged and hostile files and on a full disk
# (docs/reliability.md): each exits non-zero with a clear message, never crashes, and leaves
# no output or temporary file behind.
#   bash tests/cli_files_test.sh KVSIM_BIN
# The full-disk checks mount a 64 KB tmpfs; they are skipped, saying why, where mounting is
# not permitted (not root, or in a container without CAP_SYS_ADMIN).
set -u
KVSIM="$1"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK=$(mktemp -d)
FULL="$WORK/full"
cleanup() {
  mountpoint -q "$FULL" 2>/dev/null && umount "$FULL"
  rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=tests/cli_lib.sh
source "$(dirname "$0")/cli_lib.sh"

# h5edit FILE PYTHON: runs PYTHON with `f` the file opened read-write (h5py).
h5edit() {
  python3 - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    exec(sys.argv[2])
PY
}

"$KVSIM" synth --preset tiny --out "$WORK/t.h5" >/dev/null || fail "synth"
"$KVSIM" inspect --check "$WORK/t.h5" >/dev/null && ok || fail "inspect --check on a good trace"

# A damaged chunk: one flipped bit in sequence 0's k, found by Fletcher-32.
cp "$WORK/t.h5" "$WORK/flip.h5"
offset=$(python3 -c "
import h5py
with h5py.File('$WORK/flip.h5') as f: print(f['sequences/000000/k'].id.get_chunk_info(0).byte_offset)")
python3 -c "
with open('$WORK/flip.h5', 'r+b') as f:
    f.seek($offset + 10); b = f.read(1); f.seek($offset + 10); f.write(bytes([b[0] ^ 1]))"
expect_fail 1 "dataset 'k': cannot read data.*Fletcher32 checksum" -- "$KVSIM" inspect --check "$WORK/flip.h5"
expect_fail 1 "dataset 'k': cannot read data.*Fletcher32 checksum" -- \
  "$KVSIM" replay -t "$WORK/flip.h5" -p full -o "$WORK/bad.h5"

# Hostile attributes: every command refuses them before reading past one value.
cp "$WORK/t.h5" "$WORK/array_version.h5"
h5edit "$WORK/array_version.h5" 'f.attrs["version"] = np.ones(8192, dtype=np.int64)'
expect_fail 1 "'version' must hold one value, not 8192" -- "$KVSIM" inspect "$WORK/array_version.h5"
expect_fail 1 "'version' must hold one value, not 8192" -- \
  "$KVSIM" replay -t "$WORK/array_version.h5" -p full -o "$WORK/bad.h5"
expect_fail 1 "'version' must hold one value, not 8192" -- \
  "$KVSIM" calibrate -t "$WORK/array_version.h5" -p skvq:group=32 -o "$WORK/bad.h5"
cp "$WORK/t.h5" "$WORK/heads.h5"
h5edit "$WORK/heads.h5" 'f.attrs["num_q_heads"] = np.int64(2**32 + 9)'
expect_fail 1 "'num_q_heads' = 4294967305 is outside" -- "$KVSIM" inspect "$WORK/heads.h5"
# A declared token count the file does not hold: refused before allocating.
cp "$WORK/t.h5" "$WORK/tokens.h5"
h5edit "$WORK/tokens.h5" '
g = f["sequences/000000"]; del g["token_ids"]
g.create_dataset("token_ids", shape=(2**26,), dtype=np.int32, chunks=(1024,))'
expect_fail 1 "67108864 tokens \(at most 16777216\)" -- "$KVSIM" inspect "$WORK/tokens.h5"

# A finite value the fp16 cache and float attention cannot hold.
"$KVSIM" synth --preset tiny --dtype float32 --out "$WORK/f32.h5" >/dev/null
h5edit "$WORK/f32.h5" 'k = f["sequences/000000/k"]; x = k[0]; x[0, 0, 0] = 3e38; k[0] = x'
expect_fail 1 "too large value \(3e\+38\) at head 0, token 0, channel 0" -- \
  "$KVSIM" replay -t "$WORK/f32.h5" -p full -o "$WORK/bad.h5"
[ -e "$WORK/bad.h5" ] && fail "a failed run left a results file" || ok

# Old traces without checksums are read; add_checksums.py rewrites them with the same results
# (replayed under the same path, which the results record).
cp "$ROOT/tests/fuzz/corpus/trace/h5py_v1_no_checksums.h5" "$WORK/tr.h5"
"$KVSIM" replay -t "$WORK/tr.h5" -p full -p uniform:bits=2,group=8 -o "$WORK/old.h5" -q &&
  ok || fail "old trace"
python3 "$ROOT/trace/capture/add_checksums.py" "$WORK/tr.h5" "$WORK/tr_ck.h5" && ok ||
  fail "add_checksums.py"
python3 -c "
import h5py, sys
with h5py.File('$WORK/tr_ck.h5') as f: sys.exit(0 if f['sequences/000000/q'].fletcher32 else 1)" &&
  ok || fail "add_checksums.py wrote no Fletcher-32"
mv "$WORK/tr_ck.h5" "$WORK/tr.h5"
"$KVSIM" replay -t "$WORK/tr.h5" -p full -p uniform:bits=2,group=8 -o "$WORK/new.h5" -q &&
  python3 "$ROOT/tests/mpi/compare_results.py" "$WORK/old.h5" "$WORK/new.h5" &&
  ok || fail "results differ after add_checksums.py"

# The checksum-cost benchmark (docs/performance.md) runs, here on a tiny trace.
bash "$ROOT/sim/bench/checksum_cost.sh" "$KVSIM" 1 --quick | grep -qE "^\| tiny \| [0-9]+ / [0-9]+ B \| [0-9.]+ / [0-9.]+ \| [0-9.]+ / [0-9.]+ \|$" &&
  ok || fail "sim/bench/checksum_cost.sh"

# A full disk: a clear message with the system's reason, no crash, nothing left behind.
mkdir -p "$FULL"
if mount -t tmpfs -o size=64k tmpfs "$FULL" 2>"$WORK/mount.err"; then
  expect_fail 1 "No space left on device" -- "$KVSIM" synth --preset tiny --out "$FULL/t.h5"
  expect_fail 1 "No space left on device" -- "$KVSIM" replay -t "$WORK/t.h5" -p full \
    -p uniform:bits=2 -o "$FULL/r.h5"
  # A calibration file is small: the disk is filled up to its last 4 KB first.
  head -c $((60 * 1024)) /dev/zero >"$FULL/filler" 2>/dev/null
  expect_fail 1 "No space left on device" -- "$KVSIM" calibrate -t "$WORK/t.h5" -p skvq:group=32 \
    -o "$FULL/c.h5"
  rm -f "$FULL/filler"
  printf 'traces: [%s]\npolicies: [full, "uniform:bits=2", "uniform:bits=4"]\n' "$WORK/t.h5" \
    >"$WORK/sweep.yaml"
  # Open MPI's own allocations are reported as leaks at exit (as in tests/run.sh's MPI tests).
  expect_fail 1 "No space left on device" -- env ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" \
    "$KVSIM" sweep "$WORK/sweep.yaml" --threads 1 -q \
    --checkpoint-dir "$WORK/ckpt" --out "$FULL/s.h5"
  [ -z "$(ls -A "$FULL")" ] && ok || fail "files left on the full disk: $(ls "$FULL")"
else
  echo "SKIPPED full-disk checks: cannot mount a tmpfs ($(cat "$WORK/mount.err"))"
fi

echo "cli files: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
