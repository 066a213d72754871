#!/usr/bin/env bash
# One-shot GPU verification from prebuilt binaries: the kernel tests and the CUDA attention
# backend's tests (also under compute-sanitizer), the backend equivalence test (every
# quickstart policy, --device cpu vs cuda), the kernel and backend benchmarks, the end-to-end
# replay (GPU vs CPU vs PyTorch) and the PyTorch baselines. Built for the short device leases
# of docs/gpu.md: nothing is compiled here, every step has its own time limit, and every log
# lands in OUT_DIR (13 files at most). The step limits add up to 830 s; the steps usually take
# far less (docs/gpu.md, "Verifying on a GPU machine").
#
#   bash gpu/bench/device_check.sh BIN_DIR OUT_DIR [LIB_DIR]
#
# Run from the repository root. BIN_DIR is a Release build tree with CUDA (sm_90): it holds
# gpu/kvsim_gpu_tests, gpu/kvsim_gpu_bench, tests/kvsim_tests, sim/kvsim and sim/kvsim_bench
# (a flat folder with those five binaries works too). LIB_DIR (optional) holds shared
# libraries the device machine may lack (libbenchmark, ...). The machine must provide
# libcudart.so.13 (the CUDA toolkit) and compute-sanitizer.
set -uo pipefail
BIN_ROOT="${1:?BIN_DIR}"
OUT_DIR="${2:?OUT_DIR}"
LIB_DIR="${3:-}"
# A build tree or a flat folder of binaries.
find_bin() { if [ -x "$BIN_ROOT/$2/$1" ]; then echo "$BIN_ROOT/$2/$1"; else echo "$BIN_ROOT/$1"; fi; }
BIN="$(dirname "$(find_bin kvsim_gpu_tests gpu)")"
KVSIM_TESTS="$(find_bin kvsim_tests tests)"
KVSIM="$(find_bin kvsim sim)"
KVSIM_BENCH="$(find_bin kvsim_bench sim)"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

# Shared libraries: the machine's own first, then what travelled with the binaries.
libpath=""
for name in libcudart.so.13; do
  if ! ldconfig -p | grep -q "$name"; then
    found=$(find /usr/local/cuda* /usr/lib /opt /usr/local/lib -name "$name" 2>/dev/null | head -1)
    [ -n "$found" ] && libpath="$libpath:$(dirname "$found")"
  fi
done
[ -n "$LIB_DIR" ] && libpath="$libpath:$(cd "$LIB_DIR" && pwd)"
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}${libpath}"
export PATH="$PATH:/usr/local/cuda/bin"
SANITIZER=$(command -v compute-sanitizer || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
SANITIZER="${SANITIZER:-compute-sanitizer}"
note "date: $(date -u +%Y-%m-%dT%H:%MZ)"
note "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
  --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
ldd "$BIN/kvsim_gpu_tests" "$BIN/kvsim_gpu_bench" "$KVSIM_TESTS" "$KVSIM" "$KVSIM_BENCH" \
  | grep -E 'not found|cudart|benchmark' | sort -u | tee -a "$SUMMARY"

# STEPS (optional, space-separated step names) runs only those steps, e.g. to split the checks
# over two device calls: STEPS="backend-tests equivalence end-to-end torch-replay".
step() {  # step NAME SECONDS LOG COMMAND...: runs with a limit, records rc and seconds
  local name="$1" limit="$2" log="$3"
  shift 3
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return 0; fi
  local start=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  note "step $name: rc=$rc in $((SECONDS - start)) s (limit $limit s)"
  return 0
}

# 1. Every GPU test (the CPU-side tests run too: the binary is the whole suite).
step tests 60 "$OUT_DIR/gpu_tests.log" "$BIN/kvsim_gpu_tests"
grep -E '^\[==========\]|^\[  PASSED  \] [0-9]|^\[  SKIPPED \] [0-9]|^\[  FAILED  \]' \
  "$OUT_DIR/gpu_tests.log" | head -40 | tee -a "$SUMMARY"

# 2. compute-sanitizer on the kernel tests, without the shapes whose CPU references take
#    minutes (the kernels' code paths are the same at the smaller shapes).
KERNEL_TESTS='*Gpu*:Device*'
BIG='*n200000*:*nq131067*:*nq40000*:*n131072*:*n32768*:*g100000*:*r10000_*:*r20000_*'
step memcheck 90 "$OUT_DIR/memcheck.log" "$SANITIZER" --tool memcheck --error-exitcode 99 \
  "$BIN/kvsim_gpu_tests" --gtest_filter="$KERNEL_TESTS-$BIG"
tail -3 "$OUT_DIR/memcheck.log" | tee -a "$SUMMARY"
step racecheck 45 "$OUT_DIR/racecheck.log" "$SANITIZER" --tool racecheck --error-exitcode 99 \
  "$BIN/kvsim_gpu_tests" \
  --gtest_filter="*GpuFusedReplay*:*GpuNormTopK*:*GpuSkvq*:*GpuKivi*:*GpuSlerp*-$BIG:*n4100*:*n5000*:*n3000*:*nq4096*"
tail -3 "$OUT_DIR/racecheck.log" | tee -a "$SUMMARY"

# 1b. The CUDA attention backend against the CPU backend (tests/test_gpu_backend.cc: the three
#     operations, deltas across rounds; the host reference path), under memcheck and
#     racecheck, then the equivalence test (every quickstart policy on the embedded trace,
#     --device cpu vs cuda, docs/gpu.md tolerances).
step backend-tests 60 "$OUT_DIR/backend_tests.log" "$KVSIM_TESTS" \
  --gtest_filter='CudaBackend*:Gpu*'
grep -E '^\[ +(OK|FAILED|SKIPPED) +\]|Failure|gpu .* cpu' "$OUT_DIR/backend_tests.log" | head -30 \
  | tee -a "$SUMMARY"
step backend-memcheck 60 "$OUT_DIR/backend_sanitizer.log" "$SANITIZER" --tool memcheck \
  --error-exitcode 99 "$KVSIM_TESTS" --gtest_filter='CudaBackend*'
tail -3 "$OUT_DIR/backend_sanitizer.log" | tee -a "$SUMMARY"
step backend-racecheck 40 /tmp/kvsim_backend_racecheck.log "$SANITIZER" --tool racecheck \
  --error-exitcode 99 "$KVSIM_TESTS" --gtest_filter='CudaBackend*'
cat /tmp/kvsim_backend_racecheck.log >>"$OUT_DIR/backend_sanitizer.log"
tail -3 /tmp/kvsim_backend_racecheck.log | tee -a "$SUMMARY"
if python3 -c 'import h5py, numpy' 2>/dev/null; then
  step equivalence 90 "$OUT_DIR/equivalence.log" python3 tests/gpu_equivalence.py "$KVSIM" . \
    /tmp/kvsim_equivalence
  tail -15 "$OUT_DIR/equivalence.log" | tee -a "$SUMMARY"
else  # no h5py here: the CUDA replay travels back, to be compared on the build machine
  step equivalence 90 "$OUT_DIR/equivalence.log" "$KVSIM" replay -q --device cuda \
    -t trace/data/smollm2_default.h5 --config experiments/quickstart/policies.cfg \
    -o "$OUT_DIR/quickstart_cuda.h5"
  note "no h5py: compare with python3 tests/gpu_equivalence.py --compare CPU.h5 quickstart_cuda.h5"
fi

# 3. Benchmarks: the D2D copy is the bandwidth reference for every kernel.
step bench 90 /tmp/kvsim_gpu_bench.txt "$BIN/kvsim_gpu_bench" \
  --benchmark_filter='BM_DeviceMemcpyD2D|BM_Gpu' --benchmark_min_time=0.2 \
  --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_counters_tabular=true --benchmark_out="$OUT_DIR/gpu_bench.json" \
  --benchmark_out_format=json
grep -E 'median' /tmp/kvsim_gpu_bench.txt | head -60 | tee -a "$SUMMARY"

# 3b. Why the fused replay kernel is where it is: Nsight Compute on one launch at 32k tokens.
NCU=$(command -v ncu || find / -name ncu -type f -perm -u+x 2>/dev/null | head -1)
step ncu 45 "$OUT_DIR/ncu_fused_replay.log" "${NCU:-ncu}" --clock-control none \
  --kernel-name regex:fused_split_kernel --launch-skip 3 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats \
  "$BIN/kvsim_gpu_bench" --benchmark_filter='BM_GpuFusedReplay/tokens:32768/exact_bytes:2/' \
  --benchmark_min_time=0.01
grep -E 'Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Shared Memory Configuration Size|Block Limit|Warp Cycles Per Issued|Issued Warp Per Scheduler|No Eligible|Duration' \
  "$OUT_DIR/ncu_fused_replay.log" | head -30 | tee -a "$SUMMARY"

# 4. The straightforward PyTorch version of the fused step, same shapes and byte count.
step torch 40 "$OUT_DIR/torch_fused_replay.log" env PYTHONUNBUFFERED=1 \
  python3 gpu/bench/torch_fused_replay.py --tokens 4096 32768 131072
tail -8 "$OUT_DIR/torch_fused_replay.log" | tee -a "$SUMMARY"

# 5. End to end: the 32-layer 4096-token synthetic replay through the CUDA and the CPU backend
#    (kvsim_bench, sim/bench/backend_bench.cc), and the straightforward PyTorch replay of the
#    same shape (gpu/bench/torch_replay.py). The CPU cases take minutes; cpu_h2o is left out.
step end-to-end 150 "$OUT_DIR/end_to_end.log" "$KVSIM_BENCH" \
  --benchmark_filter='BM_EndToEndReplay/(cuda_full|cuda_kivi2|cuda_h2o|cpu_full|cpu_kivi2)' \
  --benchmark_counters_tabular=true
step torch-replay 60 /tmp/kvsim_torch_replay.log env PYTHONUNBUFFERED=1 \
  python3 gpu/bench/torch_replay.py
cat /tmp/kvsim_torch_replay.log >>"$OUT_DIR/end_to_end.log"
grep -E 'BM_EndToEnd|torch_replay' "$OUT_DIR/end_to_end.log" | tee -a "$SUMMARY"
