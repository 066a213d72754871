// Traces in Python: TraceReader (metadata, sequences, layers as NumPy arrays over the
// reader's float32 buffers, without a further copy) and the synthetic generator.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "sim/base/errors.h"
#include "sim/python/bindings.h"
#include "trace/synth.h"
#include "trace/trace.h"

namespace kvsim::python {
namespace {

nb::dict meta_dict(const TraceMeta& meta) {
  nb::dict d;
  d["model_name"] = meta.model_name;
  d["model_source"] = meta.model_source;
  d["trace_id"] = meta.trace_id;
  d["num_model_layers"] = meta.num_model_layers;
  d["layer_ids"] = meta.layer_ids;
  d["sliding_window"] = meta.sliding_window;
  d["num_q_heads"] = meta.num_q_heads;
  d["num_kv_heads"] = meta.num_kv_heads;
  d["head_dim"] = meta.head_dim;
  d["attn_scale"] = meta.attn_scale;
  d["rope_theta"] = meta.rope_theta;
  d["dtype"] = dtype_name(meta.dtype);
  return d;
}

// q [Hq, T, d], k and v [Hkv, T, d]: three arrays over one LayerData, freed with the last.
nb::tuple layer_arrays(LayerData&& layer, const TraceMeta& meta) {
  auto* owned = new LayerData(std::move(layer));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<LayerData*>(p); });
  const auto T = static_cast<size_t>(owned->num_tokens), d = static_cast<size_t>(owned->head_dim);
  const auto hq = static_cast<size_t>(meta.num_q_heads),
             hkv = static_cast<size_t>(meta.num_kv_heads);
  using Array = nb::ndarray<nb::numpy, float, nb::ndim<3>>;
  return nb::make_tuple(Array(owned->q.data(), {hq, T, d}, owner),
                        Array(owned->k.data(), {hkv, T, d}, owner),
                        Array(owned->v.data(), {hkv, T, d}, owner));
}

// Sets the fields of `c` named in `options` (the CLI's option names, '-' as '_').
void apply_synth_options(SynthConfig& c, const nb::dict& options) {
  const std::pair<const char*, int SynthConfig::*> ints[] = {
      {"sequences", &SynthConfig::sequences},
      {"layers", &SynthConfig::model_layers},
      {"q_heads", &SynthConfig::q_heads},
      {"kv_heads", &SynthConfig::kv_heads},
      {"head_dim", &SynthConfig::head_dim},
      {"tokens", &SynthConfig::tokens},
      {"prompt_len", &SynthConfig::prompt_len},
      {"outliers", &SynthConfig::outlier_channels},
      {"sinks", &SynthConfig::sinks},
      {"sliding_window", &SynthConfig::sliding_window},
      {"sliding_every", &SynthConfig::sliding_every},
      {"gzip", &SynthConfig::gzip_level},
  };
  for (auto [key, value] : options) {
    const std::string name = nb::cast<std::string>(key);
    bool known = false;
    for (const auto& [field, member] : ints) {
      if (name != field) continue;
      c.*member = nb::cast<int>(value);
      known = true;
    }
    if (name == "seed") {
      c.seed = nb::cast<uint64_t>(value);
    } else if (name == "keep_layers") {
      c.keep_layers = nb::cast<std::vector<int>>(value);
    } else if (name == "dtype") {
      c.dtype = parse_dtype(nb::cast<std::string>(value));
    } else if (!known) {
      throw ConfigError("synth: unknown option '" + name +
                        "' (valid: seed, keep_layers, dtype, sequences, layers, q_heads, "
                        "kv_heads, head_dim, tokens, prompt_len, outliers, sinks, "
                        "sliding_window, sliding_every, gzip)");
    }
  }
}

}  // namespace

void bind_trace(nb::module_& m) {
  nb::class_<TraceReader>(m, "TraceReader", "A trace file (docs/trace-format.md), validated.")
      .def(nb::init<const std::string&>(), nb::arg("path"))
      .def_prop_ro("path", &TraceReader::path)
      .def_prop_ro("meta", [](const TraceReader& t) { return meta_dict(t.meta()); })
      .def_prop_ro("num_sequences", &TraceReader::num_sequences)
      .def(
          "sequence",
          [](const TraceReader& t, int index) {
            if (index < 0 || index >= t.num_sequences()) {
              throw ConfigError("sequence " + std::to_string(index) + " out of range (trace has " +
                                std::to_string(t.num_sequences()) + ")");
            }
            const SequenceInfo& s = t.sequence(index);
            return nb::make_tuple(s.num_tokens, s.prompt_len);
          },
          nb::arg("index"), "(num_tokens, prompt_len) of a sequence")
      .def(
          "read_layer",
          [](const TraceReader& t, int sequence, int slot) {
            if (sequence < 0 || sequence >= t.num_sequences() || slot < 0 ||
                slot >= t.meta().num_layers()) {
              throw ConfigError("layer slot " + std::to_string(slot) + " of sequence " +
                                std::to_string(sequence) + " out of range");
            }
            return layer_arrays(t.read_layer(sequence, slot), t.meta());
          },
          nb::arg("sequence"), nb::arg("slot"), "(q, k, v) float32 arrays of one stored layer")
      .def(
          "token_ids",
          [](const TraceReader& t, int sequence) {
            return numpy_array(t.read_token_ids(sequence));
          },
          nb::arg("sequence"))
      .def("validate_all_values", &TraceReader::validate_all_values,
           nb::call_guard<nb::gil_scoped_release>());

  m.def(
      "synth",
      [](const std::string& path, const std::string& preset, const nb::dict& options) {
        SynthConfig c = synth_preset(preset);
        apply_synth_options(c, options);
        c.validate();
        nb::gil_scoped_release release;
        write_synth_trace(path, c);
      },
      nb::arg("path"), nb::arg("preset"), nb::arg("options"),
      "Writes a synthetic trace (the presets and options of `kvsim synth`).");
  m.def("synth_presets", &synth_preset_names);
}

}  // namespace kvsim::python
