#include "trace/synth.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "sim/base/errors.h"
#include "sim/base/rng.h"

namespace kvsim {

void SynthConfig::validate() const {
  auto fail = [](const std::string& m) { throw ConfigError("synth: " + m); };
  if (sequences < 1) fail("sequences must be >= 1");
  if (model_layers < 1) fail("layers must be >= 1");
  if (q_heads < 1 || kv_heads < 1 || q_heads % kv_heads != 0) {
    fail("q_heads must be a positive multiple of kv_heads");
  }
  if (head_dim < 8 || head_dim % 2 != 0) fail("head_dim must be even and >= 8");
  if (tokens < 2) fail("tokens must be >= 2");
  if (prompt_len < 1 || prompt_len >= tokens) fail("prompt_len must be in [1, tokens)");
  if (outlier_channels < 0 || outlier_channels > head_dim / 4) {
    fail("outlier_channels must be in [0, head_dim/4]");
  }
  if (sinks < 0 || sinks >= prompt_len) fail("sinks must be in [0, prompt_len)");
  if (!(locality >= 0 && locality < 1)) fail("locality must be in [0, 1)");
  if (!(depth_rho_min >= 0 && depth_rho_max < 1 && depth_rho_min <= depth_rho_max)) {
    fail("need 0 <= depth_rho_min <= depth_rho_max < 1");
  }
  if (sliding_window < 0 || sliding_every < 0) fail("sliding_window/every must be >= 0");
  for (int l : keep_layers) {
    if (l < 0 || l >= model_layers) fail("keep layer " + std::to_string(l) + " out of range");
  }
  // One sequence's stored layers are generated in memory at once (float32):
  // refuse what cannot be allocated instead of failing in the allocator.
  const int stored = keep_layers.empty() ? model_layers : static_cast<int>(keep_layers.size());
  const double bytes = 4.0 * stored * (q_heads + 2.0 * kv_heads) * tokens * head_dim;
  if (bytes > kMaxSequenceBytes) {
    std::ostringstream os;
    os << "one sequence needs " << bytes / (1u << 30) << " GiB in memory (" << stored
       << " layers x " << q_heads << "+2x" << kv_heads << " heads x " << tokens << " tokens x "
       << head_dim << " dims, float32); the limit is " << (kMaxSequenceBytes >> 30)
       << " GiB: use fewer tokens, heads, layers or --keep-layers";
    fail(os.str());
  }
}

SynthConfig synth_preset(const std::string& name) {
  SynthConfig c;
  if (name == "default") return c;
  if (name == "tiny") {
    c.model_layers = 4;
    c.q_heads = 4;
    c.kv_heads = 2;
    c.head_dim = 32;
    c.tokens = 96;
    c.prompt_len = 64;
    c.outlier_channels = 2;
    return c;
  }
  if (name == "bench") {
    c.model_layers = 32;
    c.q_heads = 32;
    c.kv_heads = 8;
    c.head_dim = 128;
    c.tokens = 4096;
    c.prompt_len = 3840;
    c.outlier_channels = 6;
    return c;
  }
  throw ConfigError("unknown synth preset '" + name + "' (valid: default, tiny, bench)");
}

std::vector<std::string> synth_preset_names() { return {"default", "tiny", "bench"}; }

namespace {

std::vector<int> stored_layers(const SynthConfig& c) {
  if (!c.keep_layers.empty()) {
    std::vector<int> ids = c.keep_layers;
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    return ids;
  }
  std::vector<int> ids(c.model_layers);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

int window_of_layer(const SynthConfig& c, int layer) {
  if (c.sliding_window <= 0) return 0;
  if (c.sliding_every <= 0) return c.sliding_window;
  return (layer % c.sliding_every == c.sliding_every - 1) ? 0 : c.sliding_window;
}

// Fills x[T, d] with an AR(1) process over tokens, unit variance per channel.
void ar1_process(Rng& rng, double phi, int tokens, int dim, std::vector<float>& x) {
  x.assign(static_cast<size_t>(tokens) * dim, 0.f);
  const double innovation = std::sqrt(1.0 - phi * phi);
  for (int c = 0; c < dim; ++c) x[c] = static_cast<float>(rng.normal());
  for (int t = 1; t < tokens; ++t) {
    for (int c = 0; c < dim; ++c) {
      const size_t i = static_cast<size_t>(t) * dim + c;
      x[i] = static_cast<float>(phi * x[i - dim] + innovation * rng.normal());
    }
  }
}

// Mixes a fresh process into the previous layer's: corr(prev, next) = rho.
void mix_depth(double rho, const std::vector<float>& fresh, std::vector<float>& state) {
  const double keep = rho, add = std::sqrt(1.0 - rho * rho);
  for (size_t i = 0; i < state.size(); ++i) {
    state[i] = static_cast<float>(keep * state[i] + add * fresh[i]);
  }
}

}  // namespace

void apply_rope(float* x, int head_dim, int64_t position, double theta) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(theta, -2.0 * i / head_dim);
    const double angle = static_cast<double>(position) * freq;
    const double c = std::cos(angle), s = std::sin(angle);
    const double a = x[i], b = x[i + half];
    x[i] = static_cast<float>(a * c - b * s);
    x[i + half] = static_cast<float>(b * c + a * s);
  }
}

TraceMeta synth_meta(const SynthConfig& config) {
  config.validate();
  TraceMeta m;
  m.model_name = "kvsim-synthetic";
  m.model_source = "kvsim synth (seed " + std::to_string(config.seed) + ")";
  m.num_model_layers = config.model_layers;
  m.layer_ids = stored_layers(config);
  for (int l : m.layer_ids) m.sliding_window.push_back(window_of_layer(config, l));
  m.num_q_heads = config.q_heads;
  m.num_kv_heads = config.kv_heads;
  m.head_dim = config.head_dim;
  m.attn_scale = 1.0 / std::sqrt(static_cast<double>(config.head_dim));
  m.rope_theta = config.rope_theta;
  m.dtype = config.dtype;
  return m;
}

std::vector<LayerData> synth_sequence(const SynthConfig& c, int sequence) {
  c.validate();
  const std::vector<int> keep = stored_layers(c);
  const int T = c.tokens, D = c.head_dim, Hkv = c.kv_heads, group = c.q_heads / c.kv_heads;
  const int half = D / 2;
  const size_t plane = static_cast<size_t>(T) * D;

  // Per kv head: fixed outlier channels and the sink direction (lowest-frequency
  // RoPE pairs, which rotate slowly, so sinks stay attractive at any distance).
  std::vector<std::vector<int>> outliers(Hkv);
  std::vector<std::vector<float>> sink_dir(Hkv, std::vector<float>(D, 0.f));
  for (int h = 0; h < Hkv; ++h) {
    // Model properties: the same for every sequence (calibration on one
    // sequence must transfer to another, as on a real model).
    Rng rng(derive_seed(c.seed, 0xA11CE, h));
    std::vector<int> candidates;
    for (int i = half / 2; i < half - 4; ++i) candidates.push_back(i);
    for (int n = 0; n < c.outlier_channels && !candidates.empty(); ++n) {
      const size_t pick = rng.below(candidates.size());
      outliers[h].push_back(candidates[pick]);
      candidates.erase(candidates.begin() + static_cast<long>(pick));
    }
    double norm = 0;
    for (int i = half - 4; i < half; ++i) {
      for (int ch : {i, i + half}) {
        sink_dir[h][ch] = static_cast<float>(1.0 + 0.3 * rng.normal());
        norm += sink_dir[h][ch] * sink_dir[h][ch];
      }
    }
    for (float& x : sink_dir[h]) x = static_cast<float>(x / std::sqrt(norm));
  }

  // Depth chains, one per kv head, for the key and value token processes and
  // the per-channel key means.
  std::vector<std::vector<float>> key_state(Hkv), value_state(Hkv), mean_state(Hkv);
  std::vector<float> fresh;
  std::vector<LayerData> out;
  const double scale_loc = 0.6, sink_query = 5.0, sink_key = 10.0;
  for (int layer = 0; layer < c.model_layers; ++layer) {
    const double depth = c.model_layers > 1 ? static_cast<double>(layer) / (c.model_layers - 1) : 0;
    const double rho = c.depth_rho_min + (c.depth_rho_max - c.depth_rho_min) * depth * depth;
    const bool stored = std::binary_search(keep.begin(), keep.end(), layer);
    LayerData data;
    if (stored) {
      data.slot =
          static_cast<int>(std::lower_bound(keep.begin(), keep.end(), layer) - keep.begin());
      data.num_tokens = T;
      data.head_dim = D;
      data.q.assign(static_cast<size_t>(c.q_heads) * plane, 0.f);
      data.k.assign(static_cast<size_t>(Hkv) * plane, 0.f);
      data.v.assign(static_cast<size_t>(Hkv) * plane, 0.f);
    }
    for (int h = 0; h < Hkv; ++h) {
      Rng rng(derive_seed(c.seed, sequence, layer, h));
      ar1_process(rng, c.locality, T, D, fresh);
      if (layer == 0)
        key_state[h] = fresh;
      else
        mix_depth(rho, fresh, key_state[h]);
      ar1_process(rng, c.locality, T, D, fresh);
      if (layer == 0)
        value_state[h] = fresh;
      else
        mix_depth(rho, fresh, value_state[h]);
      std::vector<float> mean_fresh(D);
      Rng mean_rng(derive_seed(c.seed, 0x3EA7, layer, h));  // a model property too
      for (int ch = 0; ch < D; ++ch) mean_fresh[ch] = static_cast<float>(0.5 * mean_rng.normal());
      if (layer == 0)
        mean_state[h] = mean_fresh;
      else
        mix_depth(rho, mean_fresh, mean_state[h]);
      if (!stored) continue;

      std::vector<float> channel_scale(D, 1.f), channel_mean = mean_state[h];
      for (int ch : outliers[h]) {
        channel_scale[ch] = static_cast<float>(c.outlier_scale);
        channel_mean[ch] += static_cast<float>(0.5 * c.outlier_scale);
      }
      const float* z = key_state[h].data();
      const float* y = value_state[h].data();
      for (int t = 0; t < T; ++t) {
        float* key = data.k.data() + h * plane + static_cast<size_t>(t) * D;
        float* value = data.v.data() + h * plane + static_cast<size_t>(t) * D;
        const bool is_sink = t < c.sinks;
        for (int ch = 0; ch < D; ++ch) {
          const float zc = z[static_cast<size_t>(t) * D + ch];
          key[ch] =
              is_sink ? static_cast<float>(channel_mean[ch] + 0.3 * zc + sink_key * sink_dir[h][ch])
                      : channel_mean[ch] + channel_scale[ch] * zc;
          const float yc = y[static_cast<size_t>(t) * D + ch];
          value[ch] = is_sink ? 0.1f * yc : yc;  // sinks carry little value
        }
        apply_rope(key, D, t, c.rope_theta);
        for (int j = 0; j < group; ++j) {
          const int qh = h * group + j;
          float* query = data.q.data() + qh * plane + static_cast<size_t>(t) * D;
          for (int ch = 0; ch < D; ++ch) {
            query[ch] = static_cast<float>(scale_loc * z[static_cast<size_t>(t) * D + ch] +
                                           sink_query * sink_dir[h][ch] + 0.3 * rng.normal());
          }
          apply_rope(query, D, t, c.rope_theta);
        }
      }
    }
    if (stored) out.push_back(std::move(data));
  }
  return out;
}

void write_synth_trace(const std::string& path, const SynthConfig& config) {
  TraceMeta meta = synth_meta(config);
  TraceWriter writer(path, meta, {config.dtype, config.gzip_level});
  const int L = meta.num_layers();
  for (int s = 0; s < config.sequences; ++s) {
    const auto layers = synth_sequence(config, s);
    const size_t T = config.tokens, D = config.head_dim;
    std::vector<float> q, k, v;
    q.reserve(L * config.q_heads * T * D);
    k.reserve(L * config.kv_heads * T * D);
    v.reserve(L * config.kv_heads * T * D);
    for (const auto& layer : layers) {
      q.insert(q.end(), layer.q.begin(), layer.q.end());
      k.insert(k.end(), layer.k.begin(), layer.k.end());
      v.insert(v.end(), layer.v.begin(), layer.v.end());
    }
    std::vector<int32_t> token_ids(T);
    Rng rng(derive_seed(config.seed, 0x70CE, s));
    for (auto& id : token_ids) id = static_cast<int32_t>(rng.below(32000));
    writer.add_sequence(token_ids, config.prompt_len, q, k, v);
  }
  writer.finish();
}

}  // namespace kvsim
