#!/usr/bin/env bash
# The test command: installs, builds and runs every test that can run here.
#   bash tests/run.sh            release build (CUDA code compiled when nvcc exists)
#                                + AddressSanitizer/UBSan build, C++ and Python tests,
#                                + the fuzz harnesses for 60 s each (tests/fuzz/run.sh)
#   bash tests/run.sh --quick    release build and tests only
# GPU tests skip cleanly when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

bash .ci/setup.sh build
echo "== C++ tests (release) =="
(cd build && ctest --output-on-failure -j 2)

echo "== Python tests (package, analysis, capture; the capture tests run SmolLM2 and Gemma 3 on the CPU) =="
bash trace/capture/install.sh
# .ci/setup.sh installed the package kvsim (pip install ./): its tests must not skip.
KVSIM_REQUIRE_PACKAGE=1 python3 -m pytest -q tests/python

if [ "$QUICK" -eq 0 ]; then
  echo "== C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer =="
  KVSIM_SKIP_PYTHON_PACKAGE=1 bash .ci/setup.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSIM_SANITIZE=address,undefined \
    -DKVSIM_ENABLE_CUDA=OFF
  # Leak checking everywhere but under mpirun: Open MPI's own allocations are
  # reported as leaks at exit, so the MPI tests run with leak checking off.
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j 2 -E '_mpi_')
  (cd build-asan && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -R '_mpi_')
  echo "== libFuzzer harnesses (clang; 60 s each; skipped without clang) =="
  bash tests/fuzz/run.sh 60 build-fuzz
fi
echo "tests: all passed"
