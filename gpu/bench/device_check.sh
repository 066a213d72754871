#!/usr/bin/env bash
# One-shot GPU verification from prebuilt binaries: the GPU tests, compute-sanitizer
# (memcheck, racecheck) on the kernel tests, the GPU benchmarks and the PyTorch baseline.
# Built for the short device leases of docs/gpu.md: nothing is compiled here, every step has
# its own time limit, and every log lands in OUT_DIR (8 files at most).
#
#   bash gpu/bench/device_check.sh BIN_DIR OUT_DIR [LIB_DIR]
#
# BIN_DIR holds kvsim_gpu_tests and kvsim_gpu_bench (a Release build with CUDA, sm_90);
# LIB_DIR (optional) holds shared libraries the device machine may lack (libbenchmark).
# The machine must provide libcudart.so.13 and libnccl.so.2 (the CUDA toolkit, or the
# nvidia-nccl wheel that PyTorch installs) and compute-sanitizer.
set -uo pipefail
BIN="${1:?BIN_DIR}"
OUT_DIR="${2:?OUT_DIR}"
LIB_DIR="${3:-}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

# Shared libraries: the machine's own first, then what travelled with the binaries.
libpath=""
for name in libcudart.so.13 libnccl.so.2; do
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
ldd "$BIN/kvsim_gpu_tests" "$BIN/kvsim_gpu_bench" | grep -E 'not found|cudart|nccl|benchmark' \
  | tee -a "$SUMMARY"

step() {  # step NAME SECONDS LOG COMMAND...: runs with a limit, records rc and seconds
  local name="$1" limit="$2" log="$3"
  shift 3
  local start=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  note "step $name: rc=$rc in $((SECONDS - start)) s (limit $limit s)"
  return 0
}

# 1. Every GPU test (the CPU-side tests run too: the binary is the whole suite).
step tests 120 "$OUT_DIR/gpu_tests.log" "$BIN/kvsim_gpu_tests"
grep -E '^\[==========\]|^\[  PASSED  \] [0-9]|^\[  SKIPPED \] [0-9]|^\[  FAILED  \]' \
  "$OUT_DIR/gpu_tests.log" | head -40 | tee -a "$SUMMARY"

# 2. compute-sanitizer on the kernel tests, without the shapes whose CPU references take
#    minutes (the kernels' code paths are the same at the smaller shapes).
KERNEL_TESTS='*Gpu*:Device*'
BIG='*n200000*:*nq131067*:*nq40000*:*n131072*:*n32768*:*g100000*:*r10000_*:*r20000_*'
step memcheck 100 "$OUT_DIR/memcheck.log" "$SANITIZER" --tool memcheck --error-exitcode 99 \
  "$BIN/kvsim_gpu_tests" --gtest_filter="$KERNEL_TESTS-$BIG"
tail -3 "$OUT_DIR/memcheck.log" | tee -a "$SUMMARY"
# NCCL's communicator set-up probes its own kernels with cudaFuncGetAttributes and handles
# cudaErrorNoKernelImageForDevice for the architectures its build lacks; memcheck reports
# those API errors as errors. The reduction test runs under memcheck with API-error reports
# off (memory errors are still reported).
step memcheck-nccl 60 "$OUT_DIR/memcheck_nccl.log" "$SANITIZER" --tool memcheck \
  --report-api-errors no --error-exitcode 99 "$BIN/kvsim_gpu_tests" --gtest_filter='Reduce*'
tail -2 "$OUT_DIR/memcheck_nccl.log" | tee -a "$SUMMARY"
step racecheck 60 "$OUT_DIR/racecheck.log" "$SANITIZER" --tool racecheck --error-exitcode 99 \
  "$BIN/kvsim_gpu_tests" \
  --gtest_filter="*GpuFusedReplay*:*GpuNormTopK*:*GpuSkvq*:*GpuKivi*:*GpuSlerp*-$BIG:*n4100*:*n5000*:*n3000*:*nq4096*"
tail -3 "$OUT_DIR/racecheck.log" | tee -a "$SUMMARY"

# 3. Benchmarks: the D2D copy is the bandwidth reference for every kernel.
step bench 100 /tmp/kvsim_gpu_bench.txt "$BIN/kvsim_gpu_bench" \
  --benchmark_filter='BM_DeviceMemcpyD2D|BM_Gpu' --benchmark_min_time=0.2 \
  --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_counters_tabular=true --benchmark_out="$OUT_DIR/gpu_bench.json" \
  --benchmark_out_format=json
grep -E 'median' /tmp/kvsim_gpu_bench.txt | head -60 | tee -a "$SUMMARY"

# 3b. Why the fused replay kernel is where it is: Nsight Compute on one launch at 32k tokens.
NCU=$(command -v ncu || find / -name ncu -type f -perm -u+x 2>/dev/null | head -1)
step ncu 90 "$OUT_DIR/ncu_fused_replay.log" "${NCU:-ncu}" --clock-control none \
  --kernel-name regex:fused_split_kernel --launch-skip 3 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats \
  "$BIN/kvsim_gpu_bench" --benchmark_filter='BM_GpuFusedReplay/tokens:32768/exact_bytes:2/' \
  --benchmark_min_time=0.01
grep -E 'Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Shared Memory Configuration Size|Block Limit|Warp Cycles Per Issued|Issued Warp Per Scheduler|No Eligible|Duration' \
  "$OUT_DIR/ncu_fused_replay.log" | head -30 | tee -a "$SUMMARY"

# 4. The straightforward PyTorch version of the fused step, same shapes and byte count.
step torch 60 "$OUT_DIR/torch_fused_replay.log" env PYTHONUNBUFFERED=1 \
  python3 gpu/bench/torch_fused_replay.py --tokens 4096 32768 131072
tail -8 "$OUT_DIR/torch_fused_replay.log" | tee -a "$SUMMARY"
