#!/usr/bin/env bash
# Installs everything kvsim needs on a fresh Debian machine, then configures and
# builds it. Idempotent: a machine that already has the packages skips apt.
#   bash .ci/setup.sh [build-dir] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${1:-build}"
shift || true

APT_PACKAGES=(cmake make g++ pkg-config libhdf5-openmpi-dev libopenmpi-dev openmpi-bin
              libboost-program-options-dev googletest libgtest-dev libgmock-dev
              libbenchmark-dev libyaml-cpp-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import numpy, h5py, pandas, matplotlib, pytest, tqdm, nanobind, scikit_build_core" >/dev/null 2>&1; then
  echo "setup: installing Python packages"
  "$PYTHON" -m pip install -q -r .ci/requirements.txt
fi

JOBS="${KVSIM_JOBS:-$(nproc)}"
mkdir -p "$BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >"$BUILD_DIR/configure.log" 2>&1 ||
  { cat "$BUILD_DIR/configure.log"; exit 1; }
cmake --build "$BUILD_DIR" -j "$JOBS"

# The Python package kvsim (docs/python.md), built in build/python; the sanitizer build
# (tests/run.sh) skips it with KVSIM_SKIP_PYTHON_PACKAGE=1.
if [ "${KVSIM_SKIP_PYTHON_PACKAGE:-0}" != "1" ]; then
  PYTHON="$PYTHON" KVSIM_JOBS="$JOBS" bash .ci/install_python_package.sh
fi
