#!/usr/bin/env bash
# Installs the Python package kvsim (pyproject.toml, docs/python.md) into the environment of
# $PYTHON (default python3): `pip install ./` without build isolation (the build requirements
# come from .ci/requirements.txt), building the extension in build/python, which is kept
# between runs so that a rebuild compiles only what changed. ccache is used when present.
#   bash .ci/install_python_package.sh [--editable]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if command -v ccache >/dev/null 2>&1; then
  export CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${KVSIM_JOBS:-$(nproc)}"
editable=()
[ "${1:-}" = "--editable" ] && editable=(-e)
echo "setup: installing the Python package kvsim (extension built in build/python)"
"$PYTHON" -m pip install -q --no-build-isolation -C build-dir=build/python "${editable[@]}" ./
"$PYTHON" -c "import kvsim; print('setup: kvsim', kvsim.__version__, 'installed')"
