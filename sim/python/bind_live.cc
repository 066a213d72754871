// The live mode's C++ side in Python (docs/closed-loop.md): LiveSession (sim/live_session.h),
// the caches replay builds at prefill (to compare the two), and the sweep file's grid
// expansion (sim/sweep_spec.h), so that `python -m kvsim.live --sweep` reads the same YAML as
// `kvsim sweep` with the same parser.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>

#include "sim/base/errors.h"
#include "sim/live_session.h"
#include "sim/python/bindings.h"
#include "sim/sweep_spec.h"
#include "trace/trace.h"

namespace kvsim::python {
namespace {

using Rows = nb::ndarray<const float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;

void check_rows(const char* name, const Rows& a, int heads, int64_t n, int d) {
  if (static_cast<int64_t>(a.shape(0)) != heads || static_cast<int64_t>(a.shape(1)) != n ||
      static_cast<int64_t>(a.shape(2)) != d) {
    throw ConfigError(std::string("live session: ") + name + " has shape [" +
                      std::to_string(a.shape(0)) + ", " + std::to_string(a.shape(1)) + ", " +
                      std::to_string(a.shape(2)) + "], expected [" + std::to_string(heads) + ", " +
                      std::to_string(n) + ", " + std::to_string(d) + "]");
  }
}

// (positions [n] int32, keys [n, d], values [n, d]) copies of one cache.
nb::tuple cache_arrays(const HeadCache& c) {
  const size_t n = c.size(), d = static_cast<size_t>(c.head_dim);
  return nb::make_tuple(numpy_array(std::vector<int32_t>(c.positions)),
                        numpy_array(std::vector<float>(c.keys), {n, d}),
                        numpy_array(std::vector<float>(c.values), {n, d}));
}

void init_session(LiveSession* self, const std::string& spec, const std::string& model_name,
                  int num_layers, int num_q_heads, int num_kv_heads, int head_dim,
                  std::vector<int> sliding_window, double attn_scale, int sequence,
                  int64_t prompt_len, int64_t max_tokens, uint64_t seed, const std::string& dtype,
                  std::optional<std::string> calibration_trace) {
  LiveModelShape shape{model_name, num_layers,     num_q_heads, num_kv_heads,
                       head_dim,   sliding_window, attn_scale,  parse_dtype(dtype)};
  std::optional<TraceReader> trace;
  if (calibration_trace) trace.emplace(*calibration_trace);
  new (self)
      LiveSession(shape, spec, sequence, prompt_len, max_tokens, seed, trace ? &*trace : nullptr);
}

void append(LiveSession& s, int layer, const Rows& q, const Rows& k, const Rows& v) {
  const TraceMeta& m = s.meta();
  const auto n = static_cast<int64_t>(q.shape(1));
  check_rows("q", q, m.num_q_heads, n, m.head_dim);
  check_rows("k", k, m.num_kv_heads, n, m.head_dim);
  check_rows("v", v, m.num_kv_heads, n, m.head_dim);
  s.append(layer, q.data(), k.data(), v.data(), n);
}

nb::tuple view(const LiveSession& s, int layer) {
  LiveView v;
  s.view(layer, v);
  const auto h = static_cast<size_t>(s.meta().num_kv_heads), w = static_cast<size_t>(v.width),
             d = static_cast<size_t>(s.meta().head_dim);
  return nb::make_tuple(
      numpy_array(std::move(v.positions), {h, w}), numpy_array(std::move(v.keys), {h, w, d}),
      numpy_array(std::move(v.values), {h, w, d}), numpy_array(std::move(v.lengths)));
}

nb::list replay_prefill(const std::string& trace_path, const std::string& spec, int sequence,
                        uint64_t seed) {
  const TraceReader trace(trace_path);
  const auto caches = replay_prefill_caches(trace, spec, sequence, seed);
  const int hkv = trace.meta().num_kv_heads;
  nb::list layers;
  for (int slot = 0; slot < trace.meta().num_layers(); ++slot) {
    nb::list heads;
    for (int h = 0; h < hkv; ++h) heads.append(cache_arrays(caches[slot * hkv + h]));
    layers.append(heads);
  }
  return layers;
}

nb::list sweep_policies(const std::string& path) {
  const SweepFile file = SweepFile::load(path);
  nb::list out;
  for (const SweepConfig& c : expand_grid(file.policies))
    out.append(nb::make_tuple(c.spec, c.origin));
  return out;
}

}  // namespace

void bind_live(nb::module_& m) {
  nb::class_<LiveSession>(m, "LiveSession",
                          "One policy's cache for one sequence of a live model "
                          "(sim/live_session.h).")
      .def("__init__", &init_session, nb::arg("spec"), nb::arg("model_name"), nb::arg("num_layers"),
           nb::arg("num_q_heads"), nb::arg("num_kv_heads"), nb::arg("head_dim"),
           nb::arg("sliding_window"), nb::arg("attn_scale"), nb::arg("sequence"),
           nb::arg("prompt_len"), nb::arg("max_tokens"), nb::arg("seed") = 0,
           nb::arg("dtype") = "float32", nb::arg("calibration_trace") = nb::none())
      .def("append", &append, nb::arg("layer"), nb::arg("q"), nb::arg("k"), nb::arg("v"),
           "Layer `layer` produced new tokens: q [Hq, n, d], k and v [Hkv, n, d] (float32).")
      .def("view", &view, nb::arg("layer"),
           "(positions [Hkv, w], keys [Hkv, w, d], values [Hkv, w, d], lengths [Hkv]): what "
           "the layer attends over at its newest token, padded.")
      .def(
          "cache",
          [](const LiveSession& s, int layer, int kv_head) {
            return cache_arrays(s.cache(layer, kv_head));
          },
          nb::arg("layer"), nb::arg("kv_head"))
      .def("tokens", &LiveSession::tokens, nb::arg("layer"))
      .def(
          "footprint",
          [](const LiveSession& s) {
            const LiveFootprint f = s.footprint();
            return nb::make_tuple(f.bits, f.kept_tokens, f.fp16_bits);
          },
          "(bits held, cache rows, fp16 bits of the uncompressed cache) over every layer.")
      .def_prop_ro("spec", [](const LiveSession& s) { return s.spec().text(); })
      .def_prop_ro("resolved", [](const LiveSession& s) { return s.spec().canonical(); });
  m.def("replay_prefill_caches", &replay_prefill, nb::arg("trace"), nb::arg("spec"),
        nb::arg("sequence"), nb::arg("seed") = 0,
        "The caches replay builds at prefill: [slot][kv head] -> (positions, keys, values).");
  m.def("sweep_policies", &sweep_policies, nb::arg("path"),
        "The policy specs of a sweep file's grids, expanded: [(spec, origin)].");
}

}  // namespace kvsim::python
