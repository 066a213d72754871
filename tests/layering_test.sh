#!/usr/bin/env bash
# Layering test (docs/architecture.md): fails when a file in a lower layer includes a
# header of a higher layer, when the policies, the GPU layer or the base layer see
# HDF5/MPI, or when a lower layer's CMake target links a higher one.
#   bash tests/layering_test.sh [repo-root]
set -uo pipefail
ROOT="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$ROOT" || exit 2

fail=0
violation() {
  echo "layering violation: $*" >&2
  fail=1
}

# Sources of one layer: C++/CUDA files under a folder (not its subfolders when they are
# another layer, e.g. sim/base under sim).
sources() {
  find "$@" -type f \( -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) | sort
}

# check_layer NAME ALLOWED_REGEX FORBIDDEN_SYSTEM_REGEX FILES...
#   every `#include "x"` must match ALLOWED_REGEX; no `#include <y>` may match FORBIDDEN.
check_layer() {
  local name="$1" allowed="$2" forbidden_sys="$3"
  shift 3
  local f line inc
  for f in "$@"; do
    while IFS= read -r line; do
      inc="${line#*\"}"
      inc="${inc%%\"*}"
      [[ "$inc" =~ $allowed ]] || violation "$f ($name) includes \"$inc\""
    done < <(grep -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f")
    if [ -n "$forbidden_sys" ]; then
      while IFS= read -r line; do
        violation "$f ($name) includes ${line#*include}"
      done < <(grep -E "^[[:space:]]*#[[:space:]]*include[[:space:]]*<($forbidden_sys)>" "$f")
    fi
  done
}

NO_IO='hdf5\.h|H5[A-Za-z]*\.h|mpi\.h'

# no_h5 LAYER FILES...: kvsim_h5 (sim/base/h5.h) is above the layer.
no_h5() {
  local name="$1" f
  shift
  for f in "$@"; do
    grep -qE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"sim/base/h5\.h"' "$f" &&
      violation "$f ($name) includes sim/base/h5.h (kvsim_h5 is not below $name)"
  done
}

# kvsim_base: sim/base/ except h5.*, nothing above it, no HDF5/MPI.
mapfile -t base < <(sources sim/base | grep -v '^sim/base/h5\.')
check_layer kvsim_base '^sim/base/[^/]+$' "$NO_IO" "${base[@]}"
no_h5 kvsim_base "${base[@]}"

# kvsim_h5: sim/base/h5.*, the base layer only.
mapfile -t h5 < <(sources sim/base | grep '^sim/base/h5\.')
check_layer kvsim_h5 '^sim/base/[^/]+$' 'mpi\.h' "${h5[@]}"

# kvsim_trace: trace/ over kvsim_h5 and kvsim_base.
mapfile -t trace < <(sources trace)
check_layer kvsim_trace '^(trace|sim/base)/[^/]+$' 'mpi\.h' "${trace[@]}"

# kvsim_policies: policies/ over kvsim_base only (no trace files, no HDF5 helpers).
mapfile -t policies < <(sources policies)
check_layer kvsim_policies '^(policies/[^/]+|sim/base/[^/]+)$' "$NO_IO" "${policies[@]}"
no_h5 kvsim_policies "${policies[@]}"

# kvsim_gpu: gpu/ over kvsim_base only.
mapfile -t gpu < <(sources gpu)
check_layer kvsim_gpu '^(gpu/.+|sim/base/[^/]+)$' "$NO_IO" "${gpu[@]}"
no_h5 kvsim_gpu "${gpu[@]}"

# The CMake targets of the lower layers link nothing above them.
links_of() {  # the target_link_libraries lines of a CMakeLists.txt, joined
  tr '\n' ' ' <"$1" | grep -oE 'target_link_libraries\([^)]*\)' || true
}
check_links() {  # check_links FILE LAYER FORBIDDEN_REGEX
  local links
  links="$(links_of "$1")"
  if grep -qE "$3" <<<"$links"; then
    violation "$1 ($2) links $(grep -oE "$3" <<<"$links" | sort -u | tr '\n' ' ')"
  fi
}
check_links policies/CMakeLists.txt kvsim_policies 'kvsim_(h5|trace|sim|gpu)\b|HDF5|MPI::'
check_links trace/CMakeLists.txt kvsim_trace 'kvsim_(policies|sim|gpu)\b'
check_links gpu/CMakeLists.txt kvsim_gpu 'kvsim_(h5|trace|policies|sim)\b|HDF5'
base_cmake="$(tr '\n' ' ' <sim/base/CMakeLists.txt)"
base_links="$(grep -oE 'target_link_libraries\(kvsim_base [^)]*\)' <<<"$base_cmake" |
  sed 's/^target_link_libraries(kvsim_base//' || true)"
grep -qE 'kvsim_|HDF5|MPI::' <<<"$base_links" &&
  violation "sim/base/CMakeLists.txt (kvsim_base) links $base_links"

if [ "$fail" -ne 0 ]; then
  echo "layering test FAILED (see docs/architecture.md for the allowed edges)" >&2
  exit 1
fi
echo "layering test passed: $((${#base[@]} + ${#h5[@]} + ${#trace[@]} + ${#policies[@]} + ${#gpu[@]})) files checked"
