// Shared pieces of the Python extension kvsim._core (docs/python.md): the bind functions of
// each file and the conversions they share. The extension is the top layer, beside the CLI.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <vector>

#include "policies/params.h"

namespace kvsim::python {

namespace nb = nanobind;

void bind_trace(nb::module_& m);   // bind_trace.cc: TraceReader, synth
void bind_replay(nb::module_& m);  // bind_replay.cc: replay, ReplayOutput, columns
void bind_scorer(nb::module_& m);  // py_scorer.cc: scorers written in Python
void bind_live(nb::module_& m);    // bind_live.cc: the live mode's session, sweep grids

// A NumPy array that owns `values` (moved to the heap, freed with the array): no copy.
template <typename T>
nb::object numpy_array(std::vector<T>&& values, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, T>(owned->data(), shape, owner));
}
template <typename T>
nb::object numpy_array(std::vector<T>&& values) {
  const size_t n = values.size();
  return numpy_array(std::move(values), {n});
}

// A parameter's resolved value as a Python int, float, bool, str or list of ints.
nb::object param_value(const ParamSpec& spec, const Params& params);

}  // namespace kvsim::python
