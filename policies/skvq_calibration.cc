// SKVQ calibration (policies/skvq_calibration.h): the options, the channel grouping (the
// k-means itself is policies/kmeans.h), the per-channel statistics and the clip search. The
// calibration files are read and written in the sim layer (sim/skvq_calibration_io.cc).
#include "policies/skvq_calibration.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>

#include "policies/kmeans.h"
#include "policies/policy.h"
#include "policies/rope.h"
#include "sim/base/errors.h"

namespace kvsim {

namespace {

// The channel clustering's k-means: fixed, so that a calibration is reproducible.
constexpr KmeansOptions kChannelKmeans{
    .seed = 0x5c1a5eed2024ull, .restarts = 10, .max_iterations = 100};

std::string format_bits(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", b);
  return buf;
}

}  // namespace

std::string skvq_scope_name(SkvqScope s) { return s == SkvqScope::kHead ? "head" : "layer"; }
std::string skvq_meta_name(MetaFormat m) { return m == MetaFormat::kFp16 ? "fp16" : "fp8"; }

// ---------------------------------------------------------------------------
SkvqOptions SkvqOptions::from_params(const Params& p) {
  SkvqOptions o;
  o.scope = p.get_string("scope") == "layer" ? SkvqScope::kLayer : SkvqScope::kHead;
  o.group = static_cast<int>(p.get_int("group"));
  o.reorder = p.get_bool("reorder");
  o.clip_search = p.get_bool("clip_search");
  o.clip = p.get_float("clip");
  o.k_bits = BitWidth::parse(p.get_float("k_bits"), "skvq: k_bits");
  o.v_bits = BitWidth::parse(p.get_float("v_bits"), "skvq: v_bits");
  o.meta = parse_meta_format(p.get_string("meta"));
  o.sinks = static_cast<int>(p.get_int("sinks"));
  o.calib_tokens = static_cast<int>(p.get_int("calib_tokens"));
  o.prerope = p.get_bool("prerope");
  return o;
}

int SkvqOptions::unit_dim(const TraceMeta& meta) const {
  return scope == SkvqScope::kHead ? meta.head_dim : meta.num_kv_heads * meta.head_dim;
}

int SkvqOptions::units(const TraceMeta& meta) const {
  return scope == SkvqScope::kHead ? meta.num_kv_heads : 1;
}

std::vector<float> skvq_clip_grid() {
  std::vector<float> grid;
  for (int i = 0; i <= 25; ++i) grid.push_back(static_cast<float>(1.0 - 0.02 * i));
  return grid;
}

// ---------------------------------------------------------------------------
// channel grouping
std::vector<int> skvq_kmeans(std::span<const double> x, std::span<const double> y, int k) {
  return kmeans_2d(x, y, k, kChannelKmeans);
}

SkvqGrouping skvq_group_channels(std::span<const float> mn, std::span<const float> mx, int group,
                                 bool reorder) {
  KVSIM_CHECK(mn.size() == mx.size());
  const int d = static_cast<int>(mn.size());
  KVSIM_CHECK(group >= 1 && d % group == 0);
  SkvqGrouping g;
  g.perm.resize(d);
  std::iota(g.perm.begin(), g.perm.end(), 0);
  if (!reorder) {
    for (int s = 0; s <= d; s += group) g.starts.push_back(s);
    return g;
  }
  std::vector<double> x(mn.begin(), mn.end()), y(mx.begin(), mx.end());
  const std::vector<int> labels = skvq_kmeans(x, y, d / group);
  std::stable_sort(g.perm.begin(), g.perm.end(),
                   [&](int32_t a, int32_t b) { return labels[a] < labels[b]; });
  g.starts.push_back(0);
  for (int i = 1; i < d; ++i) {
    if (labels[g.perm[i]] != labels[g.perm[i - 1]]) g.starts.push_back(i);
  }
  g.starts.push_back(d);
  return g;
}

// ---------------------------------------------------------------------------
// statistics
int64_t skvq_samples_per_sequence(const SkvqOptions& options, size_t sequences) {
  if (!options.clip_search || sequences == 0) return 0;
  const auto s = static_cast<int64_t>(sequences);
  return std::max<int64_t>(1, (options.calib_tokens + s - 1) / s);
}

std::vector<SkvqLayerStats> collect_skvq_stats(const CalibrationSource& trace, int sequence,
                                               const SkvqOptions& options, int64_t n_sample) {
  const TraceMeta& meta = trace.meta();
  const int Hkv = meta.num_kv_heads, d = meta.head_dim, D = Hkv * d;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<SkvqLayerStats> out(meta.num_layers());
  for (int slot = 0; slot < meta.num_layers(); ++slot) {
    LayerData layer = trace.read_layer(sequence, slot);
    if (options.prerope) {  // the statistics of the keys SKVQ quantizes: before RoPE
      const Rope rope = Rope::for_slot(meta, slot);
      for (int h = 0; h < Hkv; ++h) {
        for (int64_t t = 0; t < layer.num_tokens; ++t) {
          rope.apply(layer.k.data() + (h * layer.num_tokens + t) * d, t, /*inverse=*/true);
        }
      }
    }
    SkvqLayerStats& s = out[slot];
    s.k_min.assign(D, kInf);
    s.v_min.assign(D, kInf);
    s.k_max.assign(D, -kInf);
    s.v_max.assign(D, -kInf);
    const int64_t first = std::min<int64_t>(options.sinks, layer.num_tokens);
    s.tokens = layer.num_tokens - first;
    for (int h = 0; h < Hkv; ++h) {
      for (int64_t t = first; t < layer.num_tokens; ++t) {
        const float* k = layer.key(h, static_cast<int>(t));
        const float* v = layer.value(h, static_cast<int>(t));
        for (int c = 0; c < d; ++c) {
          const int ch = h * d + c;
          s.k_min[ch] = std::min(s.k_min[ch], k[c]);
          s.k_max[ch] = std::max(s.k_max[ch], k[c]);
          s.v_min[ch] = std::min(s.v_min[ch], v[c]);
          s.v_max[ch] = std::max(s.v_max[ch], v[c]);
        }
      }
    }
    s.n_sample = std::min(n_sample, s.tokens);
    s.k_sample.resize(static_cast<size_t>(s.n_sample) * D);
    s.v_sample.resize(static_cast<size_t>(s.n_sample) * D);
    for (int64_t i = 0; i < s.n_sample; ++i) {
      const int64_t t = first + (2 * i + 1) * s.tokens / (2 * s.n_sample);  // evenly spaced
      for (int h = 0; h < Hkv; ++h) {
        std::copy_n(layer.key(h, static_cast<int>(t)), d, s.k_sample.begin() + i * D + h * d);
        std::copy_n(layer.value(h, static_cast<int>(t)), d, s.v_sample.begin() + i * D + h * d);
      }
    }
  }
  return out;
}

namespace {

// Min/max over several sequences' statistics (no samples).
SkvqLayerStats combine_minmax(const std::vector<const SkvqLayerStats*>& stats) {
  KVSIM_CHECK(!stats.empty());
  SkvqLayerStats out;
  out.k_min = stats[0]->k_min;
  out.k_max = stats[0]->k_max;
  out.v_min = stats[0]->v_min;
  out.v_max = stats[0]->v_max;
  out.tokens = stats[0]->tokens;
  for (size_t i = 1; i < stats.size(); ++i) {
    const SkvqLayerStats& s = *stats[i];
    KVSIM_CHECK(s.k_min.size() == out.k_min.size());
    for (size_t c = 0; c < out.k_min.size(); ++c) {
      out.k_min[c] = std::min(out.k_min[c], s.k_min[c]);
      out.k_max[c] = std::max(out.k_max[c], s.k_max[c]);
      out.v_min[c] = std::min(out.v_min[c], s.v_min[c]);
      out.v_max[c] = std::max(out.v_max[c], s.v_max[c]);
    }
    out.tokens += s.tokens;
  }
  if (out.tokens == 0) {
    throw ConfigError(
        "skvq: the calibration sequences hold no tokens past the first `sinks` positions; "
        "calibrate on longer sequences");
  }
  return out;
}

// The clip ratio of each group that minimises the squared reconstruction error
// of the sampled tokens (ties: the larger ratio).
std::vector<float> search_clips(const SkvqGrouping& g, int offset, int D,
                                const std::vector<const SkvqLayerStats*>& stats, bool keys,
                                const BitWidth& bits, MetaFormat meta, float fallback) {
  const std::vector<float> grid = skvq_clip_grid();
  std::vector<float> clips(g.groups(), fallback);
  std::vector<float> buf, out;
  for (int gi = 0; gi < g.groups(); ++gi) {
    const int n = g.starts[gi + 1] - g.starts[gi];
    buf.resize(n);
    out.resize(n);
    std::vector<double> err(grid.size(), 0.0);
    int64_t used = 0;
    for (const SkvqLayerStats* s : stats) {
      const std::vector<float>& sample = keys ? s->k_sample : s->v_sample;
      for (int64_t t = 0; t < s->n_sample; ++t) {
        const float* row = sample.data() + t * D + offset;
        for (int j = 0; j < n; ++j) buf[j] = row[g.perm[g.starts[gi] + j]];
        for (size_t a = 0; a < grid.size(); ++a) {
          clipped_quantize(buf.data(), n, bits.max_int, grid[a], meta, out.data());
          for (int j = 0; j < n; ++j) {
            const double e = static_cast<double>(out[j]) - buf[j];
            err[a] += e * e;
          }
        }
        ++used;
      }
    }
    if (used == 0) continue;
    size_t best = 0;
    for (size_t a = 1; a < grid.size(); ++a) {
      if (err[a] < err[best]) best = a;
    }
    clips[gi] = grid[best];
  }
  return clips;
}

}  // namespace

SkvqLayerCalibration calibrate_skvq_layer(const std::vector<const SkvqLayerStats*>& stats,
                                          const TraceMeta& meta, const SkvqOptions& options) {
  const SkvqLayerStats mm = combine_minmax(stats);
  const int D = meta.num_kv_heads * meta.head_dim, du = options.unit_dim(meta);
  SkvqLayerCalibration out;
  for (int u = 0; u < options.units(meta); ++u) {
    const int offset = u * du;
    for (int side = 0; side < 2; ++side) {
      const bool keys = side == 0;
      const std::vector<float>& mn = keys ? mm.k_min : mm.v_min;
      const std::vector<float>& mx = keys ? mm.k_max : mm.v_max;
      SkvqGrouping g = skvq_group_channels(std::span<const float>(mn).subspan(offset, du),
                                           std::span<const float>(mx).subspan(offset, du),
                                           options.group, options.reorder);
      if (options.clip_search) {
        g.clip = search_clips(g, offset, D, stats, keys, keys ? options.k_bits : options.v_bits,
                              options.meta, static_cast<float>(options.clip));
      }
      (keys ? out.k : out.v).push_back(std::move(g));
    }
  }
  return out;
}

void check_skvq_calibration(const SkvqCalibration& calib, const SkvqOptions& options) {
  const SkvqOptions& c = calib.options;
  auto differ = [](const std::string& key, const std::string& file, const std::string& policy) {
    throw ConfigError("skvq: the calibration file was made with " + key + "=" + file +
                      " but the policy has " + key + "=" + policy +
                      "; recalibrate with the policy's parameters (kvsim calibrate) or use "
                      "matching ones");
  };
  if (c.scope != options.scope)
    differ("scope", skvq_scope_name(c.scope), skvq_scope_name(options.scope));
  if (c.group != options.group) {
    differ("group", std::to_string(c.group), std::to_string(options.group));
  }
  if (c.reorder != options.reorder) {
    differ("reorder", c.reorder ? "true" : "false", options.reorder ? "true" : "false");
  }
  if (c.clip_search != options.clip_search) {
    differ("clip_search", c.clip_search ? "true" : "false", options.clip_search ? "true" : "false");
  }
  if (c.prerope != options.prerope) {
    differ("prerope", c.prerope ? "true" : "false", options.prerope ? "true" : "false");
  }
  if (options.clip_search) {
    if (c.k_bits.bits != options.k_bits.bits) {
      differ("k_bits", format_bits(c.k_bits.bits), format_bits(options.k_bits.bits));
    }
    if (c.v_bits.bits != options.v_bits.bits) {
      differ("v_bits", format_bits(c.v_bits.bits), format_bits(options.v_bits.bits));
    }
    if (c.meta != options.meta)
      differ("meta", skvq_meta_name(c.meta), skvq_meta_name(options.meta));
  }
}

// ---------------------------------------------------------------------------
Params parse_skvq_params(const std::string& text) {
  const PolicyInfo* info = PolicyRegistry::instance().find("skvq");
  KVSIM_CHECK_MSG(info, "the skvq policy is not registered");
  Params p = Params::parse("skvq", info->params, text);
  if (info->check) info->check(p);
  return p;
}

SkvqCalibration calibrate_skvq(const CalibrationSource& trace, const std::vector<int>& sequences,
                               const Params& params) {
  const TraceMeta& meta = trace.meta();
  const SkvqOptions options = SkvqOptions::from_params(params);
  if (sequences.empty()) throw ConfigError("skvq calibration: no calibration sequence given");
  std::vector<int> sorted = sequences;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    throw ConfigError("skvq calibration: a calibration sequence is listed twice");
  }
  for (int s : sorted) {
    if (s < 0 || s >= trace.num_sequences()) {
      throw ConfigError("skvq calibration: sequence " + std::to_string(s) +
                        " out of range (trace has " + std::to_string(trace.num_sequences()) + ")");
    }
  }
  const int du = options.unit_dim(meta);
  if (du % options.group != 0) {
    throw ConfigError("skvq calibration: group=" + std::to_string(options.group) +
                      " must divide the " + skvq_scope_name(options.scope) + " scope's " +
                      std::to_string(du) + " channels");
  }
  const int64_t n_sample = skvq_samples_per_sequence(options, sorted.size());
  std::vector<std::vector<SkvqLayerStats>> per_sequence;
  for (int s : sorted) per_sequence.push_back(collect_skvq_stats(trace, s, options, n_sample));

  SkvqCalibration calib;
  calib.trace_id = meta.trace_id;
  calib.model_name = meta.model_name;
  calib.layer_ids = meta.layer_ids;
  calib.num_kv_heads = meta.num_kv_heads;
  calib.head_dim = meta.head_dim;
  calib.sequences = sorted;
  calib.options = options;
  for (int slot = 0; slot < meta.num_layers(); ++slot) {
    std::vector<const SkvqLayerStats*> stats;
    for (const auto& seq : per_sequence) stats.push_back(&seq[slot]);
    calib.stats.push_back(combine_minmax(stats));
    calib.layers.push_back(calibrate_skvq_layer(stats, meta, options));
  }
  return calib;
}

}  // namespace kvsim
