#include "policies/skvq_calibration.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>

#include "policies/policy.h"
#include "sim/errors.h"
#include "sim/rng.h"
#include "trace/h5.h"

namespace kvsim {

namespace {

constexpr const char* kCalibFormat = "kvsim-skvq-calibration";
constexpr int64_t kCalibVersion = 1;
constexpr uint64_t kKmeansSeed = 0x5c1a5eed2024ull;
constexpr int kKmeansRestarts = 10;
constexpr int kKmeansIterations = 100;

std::string scope_name(SkvqScope s) { return s == SkvqScope::kHead ? "head" : "layer"; }
std::string meta_name(MetaFormat m) { return m == MetaFormat::kFp16 ? "fp16" : "fp8"; }

std::string format_bits(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", b);
  return buf;
}

}  // namespace

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
// k-means
namespace {

struct KmeansRun {
  std::vector<int> labels;
  std::vector<double> cx, cy;
  double inertia = 0;
};

KmeansRun lloyd(std::span<const double> x, std::span<const double> y, std::vector<double> cx,
                std::vector<double> cy) {
  const size_t n = x.size(), k = cx.size();
  KmeansRun run;
  run.labels.assign(n, -1);
  for (int iter = 0; iter < kKmeansIterations; ++iter) {
    bool changed = false;
    for (size_t i = 0; i < n; ++i) {
      int best = 0;
      double best_d = std::numeric_limits<double>::infinity();
      for (size_t c = 0; c < k; ++c) {
        const double dx = x[i] - cx[c], dy = y[i] - cy[c];
        const double dist = dx * dx + dy * dy;
        if (dist < best_d) {  // ties go to the lower cluster
          best_d = dist;
          best = static_cast<int>(c);
        }
      }
      if (run.labels[i] != best) {
        run.labels[i] = best;
        changed = true;
      }
    }
    if (!changed) break;
    std::vector<double> sx(k, 0), sy(k, 0);
    std::vector<int64_t> count(k, 0);
    for (size_t i = 0; i < n; ++i) {
      sx[run.labels[i]] += x[i];
      sy[run.labels[i]] += y[i];
      ++count[run.labels[i]];
    }
    for (size_t c = 0; c < k; ++c) {
      if (count[c] > 0) {  // an empty cluster keeps its centre
        cx[c] = sx[c] / static_cast<double>(count[c]);
        cy[c] = sy[c] / static_cast<double>(count[c]);
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const double dx = x[i] - cx[run.labels[i]], dy = y[i] - cy[run.labels[i]];
    run.inertia += dx * dx + dy * dy;
  }
  run.cx = std::move(cx);
  run.cy = std::move(cy);
  return run;
}

}  // namespace

std::vector<int> skvq_kmeans(std::span<const double> x, std::span<const double> y, int k) {
  KVSIM_CHECK(x.size() == y.size());
  const size_t n = x.size();
  if (n == 0) return {};
  const size_t kk = static_cast<size_t>(std::clamp<int64_t>(k, 1, static_cast<int64_t>(n)));

  std::vector<KmeansRun> runs;
  // Sorted-quantile seeding: the points ordered by range, one centre per quantile.
  {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      const double ra = y[a] - x[a], rb = y[b] - x[b];
      return ra != rb ? ra < rb : x[a] < x[b];
    });
    std::vector<double> cx(kk), cy(kk);
    for (size_t c = 0; c < kk; ++c) {
      const size_t i = order[std::min(n - 1, (2 * c + 1) * n / (2 * kk))];
      cx[c] = x[i];
      cy[c] = y[i];
    }
    runs.push_back(lloyd(x, y, std::move(cx), std::move(cy)));
  }
  // k-means++ seedings from a fixed seed.
  Rng rng(kKmeansSeed);
  for (int r = 0; r < kKmeansRestarts; ++r) {
    std::vector<double> cx, cy;
    const size_t first = rng.below(n);
    cx.push_back(x[first]);
    cy.push_back(y[first]);
    std::vector<double> d2(n);
    while (cx.size() < kk) {
      double total = 0;
      for (size_t i = 0; i < n; ++i) {
        double best = std::numeric_limits<double>::infinity();
        for (size_t c = 0; c < cx.size(); ++c) {
          const double dx = x[i] - cx[c], dy = y[i] - cy[c];
          best = std::min(best, dx * dx + dy * dy);
        }
        d2[i] = best;
        total += best;
      }
      size_t pick = 0;
      if (total > 0) {
        double u = rng.uniform() * total;
        pick = n - 1;
        for (size_t i = 0; i < n; ++i) {
          if (d2[i] > 0 && u < d2[i]) {
            pick = i;
            break;
          }
          u -= d2[i];
        }
      } else {
        pick = rng.below(n);  // every point is a centre already: duplicates end up empty
      }
      cx.push_back(x[pick]);
      cy.push_back(y[pick]);
    }
    runs.push_back(lloyd(x, y, std::move(cx), std::move(cy)));
  }
  size_t best = 0;
  for (size_t r = 1; r < runs.size(); ++r) {
    if (runs[r].inertia < runs[best].inertia) best = r;
  }
  const KmeansRun& run = runs[best];

  // Renumber the non-empty clusters by centroid range, then centroid min.
  std::vector<int64_t> count(kk, 0);
  for (int l : run.labels) ++count[l];
  std::vector<int> used;
  for (size_t c = 0; c < kk; ++c) {
    if (count[c] > 0) used.push_back(static_cast<int>(c));
  }
  std::stable_sort(used.begin(), used.end(), [&](int a, int b) {
    const double ra = run.cy[a] - run.cx[a], rb = run.cy[b] - run.cx[b];
    return ra != rb ? ra < rb : run.cx[a] < run.cx[b];
  });
  std::vector<int> relabel(kk, -1);
  for (size_t i = 0; i < used.size(); ++i) relabel[used[i]] = static_cast<int>(i);
  std::vector<int> labels(n);
  for (size_t i = 0; i < n; ++i) labels[i] = relabel[run.labels[i]];
  return labels;
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

std::vector<SkvqLayerStats> collect_skvq_stats(const TraceReader& trace, int sequence,
                                               const SkvqOptions& options, int64_t n_sample) {
  const TraceMeta& meta = trace.meta();
  const int Hkv = meta.num_kv_heads, d = meta.head_dim, D = Hkv * d;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<SkvqLayerStats> out(meta.num_layers());
  for (int slot = 0; slot < meta.num_layers(); ++slot) {
    const LayerData layer = trace.read_layer(sequence, slot);
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
  if (c.scope != options.scope) differ("scope", scope_name(c.scope), scope_name(options.scope));
  if (c.group != options.group) {
    differ("group", std::to_string(c.group), std::to_string(options.group));
  }
  if (c.reorder != options.reorder) {
    differ("reorder", c.reorder ? "true" : "false", options.reorder ? "true" : "false");
  }
  if (c.clip_search != options.clip_search) {
    differ("clip_search", c.clip_search ? "true" : "false", options.clip_search ? "true" : "false");
  }
  if (options.clip_search) {
    if (c.k_bits.bits != options.k_bits.bits) {
      differ("k_bits", format_bits(c.k_bits.bits), format_bits(options.k_bits.bits));
    }
    if (c.v_bits.bits != options.v_bits.bits) {
      differ("v_bits", format_bits(c.v_bits.bits), format_bits(options.v_bits.bits));
    }
    if (c.meta != options.meta) differ("meta", meta_name(c.meta), meta_name(options.meta));
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

SkvqCalibration calibrate_skvq(const TraceReader& trace, const std::vector<int>& sequences,
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
                      " must divide the " + scope_name(options.scope) + " scope's " +
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

// ---------------------------------------------------------------------------
// file I/O
namespace {

template <typename T>
std::vector<T> read_vector(hid_t location, const std::string& name, hid_t mem_type,
                           const std::string& context) {
  h5::Handle dset = h5::open_dataset(location, name, context);
  const auto dims = h5::dataset_shape(dset.get());
  if (dims.size() != 1) throw FormatError(context + ": '" + name + "' must be 1-D");
  std::vector<T> out(dims[0]);
  if (!out.empty() &&
      H5Dread(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) {
    throw FormatError(context + ": cannot read '" + name + "' (truncated or corrupt file)");
  }
  return out;
}

void expect_size(size_t got, size_t want, const std::string& name, const std::string& context) {
  if (got != want) {
    throw FormatError(context + ": '" + name + "' holds " + std::to_string(got) +
                      " values, expected " + std::to_string(want));
  }
}

}  // namespace

void save_skvq_calibration(const std::string& path, const SkvqCalibration& calib) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    {
      h5::Handle file = h5::create_file(tmp);
      const hid_t root = file.get();
      const SkvqOptions& o = calib.options;
      h5::write_attr(root, "format", std::string(kCalibFormat));
      h5::write_attr(root, "version", kCalibVersion);
      h5::write_attr(root, "trace_id", calib.trace_id);
      h5::write_attr(root, "model_name", calib.model_name);
      h5::write_attr(root, "num_kv_heads", int64_t{calib.num_kv_heads});
      h5::write_attr(root, "head_dim", int64_t{calib.head_dim});
      h5::write_attr(root, "scope", scope_name(o.scope));
      h5::write_attr(root, "group", int64_t{o.group});
      h5::write_attr(root, "reorder", int64_t{o.reorder});
      h5::write_attr(root, "clip_search", int64_t{o.clip_search});
      h5::write_attr(root, "clip", o.clip);
      h5::write_attr(root, "k_bits", o.k_bits.bits);
      h5::write_attr(root, "v_bits", o.v_bits.bits);
      h5::write_attr(root, "meta", meta_name(o.meta));
      h5::write_attr(root, "sinks", int64_t{o.sinks});
      h5::write_attr(root, "calib_tokens", int64_t{o.calib_tokens});
      h5::write_vector(root, "layer_ids",
                       std::vector<int32_t>(calib.layer_ids.begin(), calib.layer_ids.end()));
      h5::write_vector(root, "sequences",
                       std::vector<int32_t>(calib.sequences.begin(), calib.sequences.end()));
      std::vector<int64_t> tokens;
      std::vector<float> mins[2], maxs[2], clips[2];
      std::vector<int32_t> perms[2], groups[2], starts[2];
      for (size_t l = 0; l < calib.layers.size(); ++l) {
        const SkvqLayerStats& s = calib.stats[l];
        tokens.push_back(s.tokens);
        mins[0].insert(mins[0].end(), s.k_min.begin(), s.k_min.end());
        maxs[0].insert(maxs[0].end(), s.k_max.begin(), s.k_max.end());
        mins[1].insert(mins[1].end(), s.v_min.begin(), s.v_min.end());
        maxs[1].insert(maxs[1].end(), s.v_max.begin(), s.v_max.end());
        for (int side = 0; side < 2; ++side) {
          for (const SkvqGrouping& g : side == 0 ? calib.layers[l].k : calib.layers[l].v) {
            perms[side].insert(perms[side].end(), g.perm.begin(), g.perm.end());
            groups[side].push_back(g.groups());
            starts[side].insert(starts[side].end(), g.starts.begin(), g.starts.end());
            clips[side].insert(clips[side].end(), g.clip.begin(), g.clip.end());
          }
        }
      }
      h5::write_vector(root, "tokens", tokens);
      for (int side = 0; side < 2; ++side) {
        const std::string p = side == 0 ? "k_" : "v_";
        h5::write_vector(root, p + "min", mins[side]);
        h5::write_vector(root, p + "max", maxs[side]);
        h5::write_vector(root, p + "perm", perms[side]);
        h5::write_vector(root, p + "groups", groups[side]);
        h5::write_vector(root, p + "starts", starts[side]);
        h5::write_vector(root, p + "clip", clips[side]);
      }
      h5::check(H5Fflush(root, H5F_SCOPE_GLOBAL), "cannot flush '" + tmp + "'");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      throw IoError("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(errno));
    }
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

SkvqCalibration load_skvq_calibration(const std::string& path, const TraceMeta& meta) {
  const std::string ctx = "skvq calibration '" + path + "'";
  h5::Handle file = h5::open_file_readonly(path);
  const hid_t root = file.get();
  if (h5::read_attr_string(root, "format", ctx) != kCalibFormat) {
    throw FormatError(ctx + ": not a kvsim SKVQ calibration file (format attribute)");
  }
  const int64_t version = h5::read_attr_int(root, "version", ctx);
  if (version != kCalibVersion) {
    throw FormatError(ctx + ": version " + std::to_string(version) +
                      " is not supported (expected " + std::to_string(kCalibVersion) + ")");
  }
  SkvqCalibration c;
  c.trace_id = h5::read_attr_string(root, "trace_id", ctx);
  c.model_name = h5::read_attr_string(root, "model_name", ctx);
  c.num_kv_heads = static_cast<int>(h5::read_attr_int(root, "num_kv_heads", ctx));
  c.head_dim = static_cast<int>(h5::read_attr_int(root, "head_dim", ctx));
  SkvqOptions& o = c.options;
  const std::string scope = h5::read_attr_string(root, "scope", ctx);
  if (scope != "head" && scope != "layer") throw FormatError(ctx + ": bad scope '" + scope + "'");
  o.scope = scope == "head" ? SkvqScope::kHead : SkvqScope::kLayer;
  o.group = static_cast<int>(h5::read_attr_int(root, "group", ctx));
  o.reorder = h5::read_attr_int(root, "reorder", ctx) != 0;
  o.clip_search = h5::read_attr_int(root, "clip_search", ctx) != 0;
  o.clip = h5::read_attr_double(root, "clip", ctx);
  o.sinks = static_cast<int>(h5::read_attr_int(root, "sinks", ctx));
  o.calib_tokens = static_cast<int>(h5::read_attr_int(root, "calib_tokens", ctx));
  try {
    o.k_bits = BitWidth::parse(h5::read_attr_double(root, "k_bits", ctx), "k_bits");
    o.v_bits = BitWidth::parse(h5::read_attr_double(root, "v_bits", ctx), "v_bits");
    o.meta = parse_meta_format(h5::read_attr_string(root, "meta", ctx));
  } catch (const ConfigError& e) {
    throw FormatError(ctx + ": " + e.what());
  }
  const std::vector<int32_t> layer_ids = h5::read_int32_vector(root, "layer_ids", ctx);
  c.layer_ids.assign(layer_ids.begin(), layer_ids.end());
  const std::vector<int32_t> sequences = h5::read_int32_vector(root, "sequences", ctx);
  c.sequences.assign(sequences.begin(), sequences.end());

  // The trace it will be used on must have the same layers and head shapes.
  auto list = [](const std::vector<int>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s + "]";
  };
  if (c.layer_ids != meta.layer_ids) {
    throw FormatError(ctx + ": calibrated layers " + list(c.layer_ids) +
                      " do not match the trace's stored layers " + list(meta.layer_ids));
  }
  if (c.num_kv_heads != meta.num_kv_heads || c.head_dim != meta.head_dim) {
    throw FormatError(ctx + ": calibrated for " + std::to_string(c.num_kv_heads) + " KV heads x " +
                      std::to_string(c.head_dim) + " channels, but the trace has " +
                      std::to_string(meta.num_kv_heads) + " x " + std::to_string(meta.head_dim));
  }
  const size_t L = c.layer_ids.size(), D = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  const size_t U = static_cast<size_t>(o.units(meta)), du = static_cast<size_t>(o.unit_dim(meta));
  if (o.group < 1 || du % static_cast<size_t>(o.group) != 0) {
    throw FormatError(ctx + ": group=" + std::to_string(o.group) + " does not divide " +
                      std::to_string(du) + " channels");
  }

  const std::vector<int64_t> tokens = read_vector<int64_t>(root, "tokens", H5T_NATIVE_INT64, ctx);
  expect_size(tokens.size(), L, "tokens", ctx);
  c.stats.resize(L);
  c.layers.resize(L);
  for (int side = 0; side < 2; ++side) {
    const std::string p = side == 0 ? "k_" : "v_";
    const auto mn = read_vector<float>(root, p + "min", H5T_NATIVE_FLOAT, ctx);
    const auto mx = read_vector<float>(root, p + "max", H5T_NATIVE_FLOAT, ctx);
    const auto perm = h5::read_int32_vector(root, p + "perm", ctx);
    const auto groups = h5::read_int32_vector(root, p + "groups", ctx);
    const auto starts = h5::read_int32_vector(root, p + "starts", ctx);
    const auto clip = read_vector<float>(root, p + "clip", H5T_NATIVE_FLOAT, ctx);
    expect_size(mn.size(), L * D, p + "min", ctx);
    expect_size(mx.size(), L * D, p + "max", ctx);
    expect_size(perm.size(), L * U * du, p + "perm", ctx);
    expect_size(groups.size(), L * U, p + "groups", ctx);
    size_t total_groups = 0;
    for (int32_t g : groups) {
      if (g < 1 || static_cast<size_t>(g) > du) {
        throw FormatError(ctx + ": '" + p + "groups' holds an impossible group count");
      }
      total_groups += static_cast<size_t>(g);
    }
    expect_size(starts.size(), total_groups + L * U, p + "starts", ctx);
    expect_size(clip.size(), o.clip_search ? total_groups : 0, p + "clip", ctx);
    size_t start_at = 0, clip_at = 0;
    for (size_t l = 0; l < L; ++l) {
      SkvqLayerStats& s = c.stats[l];
      s.tokens = tokens[l];
      (side == 0 ? s.k_min : s.v_min).assign(mn.begin() + l * D, mn.begin() + (l + 1) * D);
      (side == 0 ? s.k_max : s.v_max).assign(mx.begin() + l * D, mx.begin() + (l + 1) * D);
      for (size_t u = 0; u < U; ++u) {
        SkvqGrouping g;
        const size_t unit = l * U + u;
        g.perm.assign(perm.begin() + unit * du, perm.begin() + (unit + 1) * du);
        std::vector<char> seen(du, 0);
        for (int32_t ch : g.perm) {
          if (ch < 0 || static_cast<size_t>(ch) >= du || seen[ch]) {
            throw FormatError(ctx + ": '" + p + "perm' is not a permutation in layer slot " +
                              std::to_string(l));
          }
          seen[ch] = 1;
        }
        const size_t ng = static_cast<size_t>(groups[unit]);
        g.starts.assign(starts.begin() + start_at, starts.begin() + start_at + ng + 1);
        start_at += ng + 1;
        bool ok = g.starts.front() == 0 && static_cast<size_t>(g.starts.back()) == du;
        for (size_t i = 0; i + 1 < g.starts.size(); ++i) ok = ok && g.starts[i] < g.starts[i + 1];
        if (!ok) {
          throw FormatError(ctx + ": '" + p +
                            "starts' are not increasing group boundaries in "
                            "layer slot " +
                            std::to_string(l));
        }
        if (o.clip_search) {
          g.clip.assign(clip.begin() + clip_at, clip.begin() + clip_at + ng);
          clip_at += ng;
          for (float a : g.clip) {
            if (!(a > 0.f && a <= 1.f)) throw FormatError(ctx + ": clip ratio out of (0, 1]");
          }
        }
        (side == 0 ? c.layers[l].k : c.layers[l].v).push_back(std::move(g));
      }
    }
  }
  return c;
}

}  // namespace kvsim
