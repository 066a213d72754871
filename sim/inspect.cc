#include "sim/inspect.h"

#include <algorithm>
#include <cmath>
#include <iomanip>

#include "policies/rope.h"
#include "sim/base/attention.h"
#include "sim/base/errors.h"

namespace kvsim {

std::vector<HeadStats> inspect_trace(const TraceReader& trace, const InspectOptions& options) {
  const TraceMeta& meta = trace.meta();
  if (options.sequence < 0 || options.sequence >= trace.num_sequences()) {
    throw ConfigError("sequence " + std::to_string(options.sequence) + " out of range");
  }
  const auto& info = trace.sequence(options.sequence);
  const int d = meta.head_dim, group = meta.group_size();
  const int T = static_cast<int>(info.num_tokens);
  std::vector<HeadStats> out;
  LayerData previous;
  bool have_previous = false;
  // Sample up to 32 query positions among the decode steps (or the prompt's end).
  std::vector<int> query_positions;
  const int first = info.prompt_len < T ? static_cast<int>(info.prompt_len) : T - 1;
  const int stride = std::max(1, (T - first) / 32);
  for (int t = first; t < T; t += stride) query_positions.push_back(t);

  for (int slot = 0; slot < meta.num_layers(); ++slot) {
    LayerData layer = trace.read_layer(options.sequence, slot);
    const int window = meta.sliding_window[slot];
    for (int h = 0; h < meta.num_kv_heads; ++h) {
      HeadStats s;
      s.layer = meta.layer_ids[slot];
      s.kv_head = h;
      std::vector<double> channel_max(d, 0.0);
      for (int t = 0; t < T; ++t) {
        const float* k = layer.key(h, t);
        double n2 = 0;
        for (int c = 0; c < d; ++c) {
          n2 += static_cast<double>(k[c]) * k[c];
          channel_max[c] = std::max(channel_max[c], std::fabs(static_cast<double>(k[c])));
        }
        s.key_norm_mean += std::sqrt(n2) / T;
        s.key_norm_max = std::max(s.key_norm_max, std::sqrt(n2));
      }
      std::vector<double> sorted = channel_max;
      std::nth_element(sorted.begin(), sorted.begin() + d / 2, sorted.end());
      const double median = sorted[d / 2];
      for (double m : channel_max) s.outlier_channels += m > options.outlier_factor * median;

      double sink_total = 0;
      int sink_count = 0;
      std::vector<float> queries(static_cast<size_t>(group) * d), scores;
      const KeyTiles keys(layer.key(h, 0), static_cast<size_t>(T), d);  // shared by the steps
      for (int t : query_positions) {
        const int lo = window > 0 ? std::max(0, t - window + 1) : 0;
        if (lo > 0) continue;  // sinks are outside this layer's window
        const size_t n = static_cast<size_t>(t + 1);
        scores.resize(static_cast<size_t>(group) * n);
        for (int j = 0; j < group; ++j) {
          std::copy_n(layer.query(h * group + j, t), d,
                      queries.data() + static_cast<size_t>(j) * d);
        }
        // The group's queries at once, over keys transposed once (score_rows's sums, bit for bit).
        score_tiles(queries.data(), group, keys, 0, n, static_cast<float>(meta.attn_scale),
                    scores.data());
        for (int j = 0; j < group; ++j) {
          float* row = scores.data() + static_cast<size_t>(j) * n;
          softmax_inplace(row, n);
          double mass = 0;
          for (int i = 0; i < std::min<int>(options.sinks, static_cast<int>(n)); ++i)
            mass += row[i];
          sink_total += mass;
          ++sink_count;
        }
      }
      s.sink_mass = sink_count > 0 ? sink_total / sink_count : std::nan("");

      if (have_previous) {
        double cos_sum = 0;
        for (int t = 0; t < T; ++t) {
          const float* a = layer.key(h, t);
          const float* b = previous.key(h, t);
          double dot = 0, na = 0, nb = 0;
          for (int c = 0; c < d; ++c) {
            dot += static_cast<double>(a[c]) * b[c];
            na += static_cast<double>(a[c]) * a[c];
            nb += static_cast<double>(b[c]) * b[c];
          }
          cos_sum += (na > 0 && nb > 0) ? dot / std::sqrt(na * nb) : 0;
        }
        s.adjacent_cosine = cos_sum / T;
      }
      out.push_back(s);
    }
    previous = std::move(layer);
    have_previous = true;
  }
  return out;
}

void print_inspection(const TraceReader& trace, const InspectOptions& options, std::ostream& out) {
  const TraceMeta& m = trace.meta();
  out << "trace:        " << trace.path() << "\n"
      << "format:       kvsim-trace v" << trace.version() << ", dtype " << dtype_name(m.dtype)
      << ", id " << m.trace_id << "\n"
      << "model:        " << m.model_name << " (" << m.model_source << ")\n"
      << "layers:       " << m.num_layers() << " stored of " << m.num_model_layers << " [";
  for (int i = 0; i < m.num_layers(); ++i) out << (i ? "," : "") << m.layer_ids[i];
  out << "]\n"
      << "heads:        " << m.num_q_heads << " query, " << m.num_kv_heads << " kv (group "
      << m.group_size() << "), head_dim " << m.head_dim << "\n"
      << "attn scale:   " << m.attn_scale << ", rope theta " << m.rope_theta << "\n"
      << "windows:      [";
  for (int i = 0; i < m.num_layers(); ++i) {
    out << (i ? "," : "") << (m.sliding_window[i] ? std::to_string(m.sliding_window[i]) : "-");
  }
  out << "]  (- = full attention)\n"
      << "sequences:    " << trace.num_sequences() << "\n";
  for (int s = 0; s < trace.num_sequences(); ++s) {
    out << "  " << sequence_group_name(s) << ": " << trace.sequence(s).num_tokens
        << " tokens, prompt " << trace.sequence(s).prompt_len << "\n";
  }
  out << "\nper layer and kv head (sequence " << options.sequence << "):\n";
  out << std::setw(6) << "layer" << std::setw(5) << "kv" << std::setw(12) << "|k| mean"
      << std::setw(11) << "|k| max" << std::setw(10) << "outliers" << std::setw(11) << "sink mass"
      << std::setw(13) << "cos(prev L)"
      << "\n";
  out << std::fixed;
  for (const auto& h : inspect_trace(trace, options)) {
    out << std::setw(6) << h.layer << std::setw(5) << h.kv_head << std::setw(12)
        << std::setprecision(3) << h.key_norm_mean << std::setw(11) << h.key_norm_max
        << std::setw(10) << h.outlier_channels << std::setw(11) << h.sink_mass << std::setw(13);
    if (h.adjacent_cosine < -1.5)
      out << "-";
    else
      out << h.adjacent_cosine;
    out << "\n";
  }
  out << "\noutliers: channels whose max |k| exceeds " << options.outlier_factor
      << "x the median channel's; sink mass: attention on the first " << options.sinks
      << " tokens, averaged over query heads and sampled decode steps.\n";
}

namespace {

// One unit in the last place of |x| in `dtype` (the subnormal spacing below the normals).
double ulp(float x, StoredDType dtype) {
  const int mantissa = dtype == StoredDType::kFloat16    ? 10
                       : dtype == StoredDType::kBFloat16 ? 7
                                                         : 23;
  const int min_exponent = dtype == StoredDType::kFloat16 ? -14 : -126;
  int e = 0;
  (void)std::frexp(std::fabs(static_cast<double>(x)), &e);
  return std::ldexp(1.0, std::max(e - 1, min_exponent) - mantissa);
}

// Cosine of the mean of rows [0, T/2) and [T/2, T) of keys [T, d].
double halves_cosine(const std::vector<float>& keys, int T, int d) {
  std::vector<double> a(d, 0.0), b(d, 0.0);
  for (int t = 0; t < T; ++t) {
    auto& m = t < T / 2 ? a : b;
    for (int c = 0; c < d; ++c) m[c] += keys[static_cast<size_t>(t) * d + c];
  }
  double dot = 0, na = 0, nb = 0;
  for (int c = 0; c < d; ++c) {
    dot += a[c] * b[c];
    na += a[c] * a[c];
    nb += b[c] * b[c];
  }
  return na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0;
}

}  // namespace

std::vector<RopeCheck> check_rope(const TraceReader& trace, int sequence) {
  const TraceMeta& meta = trace.meta();
  if (sequence < 0 || sequence >= trace.num_sequences()) {
    throw ConfigError("sequence " + std::to_string(sequence) + " out of range");
  }
  const int d = meta.head_dim;
  std::vector<RopeCheck> out;
  for (int slot = 0; slot < meta.num_layers(); ++slot) {
    const Rope rope = Rope::for_slot(meta, slot);
    const LayerData layer = trace.read_layer(sequence, slot);
    const int T = layer.num_tokens;
    RopeCheck r;
    r.layer = meta.layer_ids[slot];
    r.theta = meta.rope_theta_by_slot.empty() ? meta.rope_theta : meta.rope_theta_by_slot[slot];
    std::vector<float> pre(static_cast<size_t>(T) * d), post(pre.size());
    for (int h = 0; h < meta.num_kv_heads; ++h) {
      for (int t = 0; t < T; ++t) {
        const float* k = layer.key(h, t);
        float* x = pre.data() + static_cast<size_t>(t) * d;
        std::copy_n(k, d, x);
        std::copy_n(k, d, post.data() + static_cast<size_t>(t) * d);
        rope.apply(x, t, /*inverse=*/true);
        std::vector<float> y(x, x + d);
        rope.apply(y.data(), t, /*inverse=*/false);
        for (int c = 0; c < d; ++c) {
          r.max_ulps = std::max(
              r.max_ulps, std::fabs(static_cast<double>(y[c]) - k[c]) / ulp(k[c], meta.dtype));
        }
      }
      r.halves_cosine += halves_cosine(pre, T, d) / meta.num_kv_heads;
      r.post_rope_cosine += halves_cosine(post, T, d) / meta.num_kv_heads;
    }
    out.push_back(r);
  }
  return out;
}

void print_rope_check(const TraceReader& trace, int sequence, std::ostream& out) {
  const TraceMeta& m = trace.meta();
  out << "\npre-RoPE check (sequence " << sequence << "): rope " << m.rope_type << ", layout "
      << m.rope_layout << ", rotary dim " << (m.rotary_dim ? m.rotary_dim : m.head_dim) << "\n";
  out << std::setw(6) << "layer" << std::setw(12) << "theta" << std::setw(16) << "round trip ulps"
      << std::setw(17) << "cos halves pre" << std::setw(18) << "cos halves post"
      << "\n";
  for (const RopeCheck& r : check_rope(trace, sequence)) {
    out << std::setw(6) << r.layer << std::setw(12) << std::defaultfloat << r.theta << std::fixed
        << std::setw(16) << std::setprecision(3) << r.max_ulps << std::setw(17)
        << std::setprecision(4) << r.halves_cosine << std::setw(18) << r.post_rope_cosine << "\n";
  }
  out << "round trip: keys un-rotated and re-rotated (float32 in between), the largest difference "
         "in units in the last place of the stored dtype; cos halves: cosine of the mean key of "
         "the sequence's two halves, averaged over KV heads (a wrong base or layout lowers it "
         "before RoPE).\n";
}

}  // namespace kvsim
