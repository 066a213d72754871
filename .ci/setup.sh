#!/usr/bin/env bash
# Installs everything kvsim needs on a fresh Debian machine, then configures and
# builds it. Idempotent: a machine that already has the packages skips apt.
#   bash .ci/setup.sh [build-dir] [--target T ...] [extra cmake args...]
# `--target T` (repeatable) builds only those targets (e.g. `--target kvsim`, the CLI:
# the quick start's build); without it, every target (tests, GPU tests, benchmarks).
# Each phase is announced on stdout, and the build shows one line per compiled file
# (`[ NN%] folder/file.cc`); warnings and errors are printed as the compiler wrote them.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${1:-build}"
shift || true
TARGETS=()
CMAKE_ARGS=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --target)
      [ "$#" -ge 2 ] || { echo "setup: --target needs a target name" >&2; exit 2; }
      TARGETS+=("$2")
      shift 2
      ;;
    *)
      CMAKE_ARGS+=("$1")
      shift
      ;;
  esac
done

APT_PACKAGES=(cmake make g++ pkg-config libhdf5-openmpi-dev libopenmpi-dev openmpi-bin
              libboost-program-options-dev googletest libgtest-dev libgmock-dev
              libbenchmark-dev libyaml-cpp-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]} (apt-get; a few minutes on a fresh machine)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages present"
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import numpy, h5py, pandas, matplotlib, pytest, tqdm, nanobind, scikit_build_core" >/dev/null 2>&1; then
  echo "setup: installing Python packages (pip: .ci/requirements.txt)"
  "$PYTHON" -m pip install -q -r .ci/requirements.txt
else
  echo "setup: Python packages present"
fi

JOBS="${KVSIM_JOBS:-$(nproc)}"
mkdir -p "$BUILD_DIR"
echo "setup: configuring $BUILD_DIR (cmake; log: $BUILD_DIR/configure.log)"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS[@]+"${CMAKE_ARGS[@]}"} \
  >"$BUILD_DIR/configure.log" 2>&1 || { cat "$BUILD_DIR/configure.log"; exit 1; }
BUILD_ARGS=()
for t in ${TARGETS[@]+"${TARGETS[@]}"}; do BUILD_ARGS+=(--target "$t"); done
echo "setup: building ${TARGETS[*]:-every target} in $BUILD_DIR ($JOBS jobs)"
# Condensed progress: `[ 42%] Building CXX object sim/CMakeFiles/kvsim_sim.dir/engine.cc.o`
# becomes `  [ 42%] sim/engine.cc`; make's bookkeeping lines are dropped.
cmake --build "$BUILD_DIR" -j "$JOBS" ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} 2>&1 |
  sed -u -E -e '/^Scanning dependencies of target|^Consolidate compiler generated dependencies/d' \
    -e '/^\[ *[0-9]+%\] Built target /d' \
    -e 's#^(\[ *[0-9]+%\]) Building [A-Z]+ object (.*)/CMakeFiles/[^/]+\.dir/(.*)\.o$#  \1 \2/\3#' \
    -e 's#^(\[ *[0-9]+%\]) Linking [A-Z]+ (static library|executable) (.*)$#  \1 linking \3#'
echo "setup: build done"

# The Python package kvsim (docs/python.md), built in build/python; the sanitizer build
# (tests/run.sh) skips it with KVSIM_SKIP_PYTHON_PACKAGE=1.
if [ "${KVSIM_SKIP_PYTHON_PACKAGE:-0}" != "1" ]; then
  PYTHON="$PYTHON" KVSIM_JOBS="$JOBS" bash .ci/install_python_package.sh
fi
