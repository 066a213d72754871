// Helpers shared by the tests: temporary files, small synthetic traces and
// hand-made shards that drive a stage directly.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "sim/base/errors.h"
#include "sim/base/h5.h"
#include "sim/engine.h"
#include "trace/synth.h"

namespace kvsim::testing {

// A fresh temporary directory, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvsim_test_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline SynthConfig tiny_config() { return synth_preset("tiny"); }

// Writes the "tiny" synthetic trace (in `dtype`, deflated at `gzip`, with `sequences`
// sequences) as `dir/name`; returns its path.
inline std::string write_tiny(const TempDir& dir, const std::string& name,
                              StoredDType dtype = StoredDType::kFloat16, int gzip = 0,
                              int sequences = 1) {
  SynthConfig c = synth_preset("tiny");
  c.dtype = dtype;
  c.gzip_level = gzip;
  c.sequences = sequences;
  const std::string path = dir.file(name);
  write_synth_trace(path, c);
  return path;
}

// Opens an HDF5 file read-write so that a test can damage it.
inline h5::Handle open_rw(const std::string& path) {
  h5::silence_hdf5_errors();
  return h5::checked(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), "open rw");
}

// The default preset (d = 64, 4 outlier key channels per head) cut to 4
// layers and 320 tokens, a 256-token prompt: the policy tests' trace.
inline SynthConfig small_synth() {
  SynthConfig c = synth_preset("default");
  c.model_layers = 4;
  c.tokens = 320;
  c.prompt_len = 256;
  return c;
}

// The ConfigError message of parsing `spec`, or "" when it parses.
inline std::string spec_error(const std::string& spec) {
  try {
    PolicySpec::parse(spec);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

// A hand-made model: the stored layers are `layer_ids` (original ids), none
// of them sliding.
inline TraceMeta hand_meta(int head_dim, int q_heads = 1, int kv_heads = 1,
                           std::vector<int> layer_ids = {0}, double attn_scale = 0.5) {
  TraceMeta m;
  m.model_name = "hand";
  m.num_model_layers = *std::max_element(layer_ids.begin(), layer_ids.end()) + 1;
  m.sliding_window.assign(layer_ids.size(), 0);
  m.layer_ids = std::move(layer_ids);
  m.num_q_heads = q_heads;
  m.num_kv_heads = kv_heads;
  m.head_dim = head_dim;
  m.attn_scale = attn_scale;
  return m;
}

// The context of a shard of one sequence over `layers` (slots 0, 1, ...).
inline ShardContext hand_context(const TraceMeta& meta, std::vector<const LayerData*> layers,
                                 int64_t prompt_len, int64_t num_tokens, uint64_t seed = 0) {
  ShardContext ctx;
  ctx.meta = &meta;
  for (size_t i = 0; i < layers.size(); ++i) ctx.slots.push_back(static_cast<int>(i));
  ctx.layers = std::move(layers);
  ctx.prompt_len = prompt_len;
  ctx.num_tokens = num_tokens;
  ctx.seed = seed;
  return ctx;
}

using Positions = std::vector<int32_t>;

inline Positions range(int32_t lo, int32_t hi) {  // [lo, hi)
  Positions out(hi - lo);
  for (int32_t p = lo; p < hi; ++p) out[p - lo] = p;
  return out;
}

// Calls select() as the engine does; returns the evicted positions, sorted.
inline Positions select(EvictStage& stage, const LayerData& raw, int64_t step, bool prefill,
                        const Positions& candidates, int kv_head = 0) {
  ArrivalView view;
  view.kv_head = kv_head;
  view.step = step;
  view.prefill = prefill;
  view.candidates = candidates;
  view.raw = &raw;
  Positions evict;
  stage.select(view, evict);
  std::sort(evict.begin(), evict.end());
  return evict;
}

// One hand-made layer (original id `layer_id`, attention scale 1) of one
// sequence, and the shard context a stage is built from. Q/K/V are zero until
// a test sets them.
struct HandShard {
  TraceMeta meta;
  LayerData layer;
  ShardContext ctx;

  HandShard(int q_heads, int kv_heads, int d, int tokens, int prompt, int layer_id = 5,
            uint64_t seed = 1)
      : meta(hand_meta(d, q_heads, kv_heads, {layer_id}, 1.0)) {
    layer.num_tokens = tokens;
    layer.head_dim = d;
    layer.q.assign(static_cast<size_t>(q_heads) * tokens * d, 0.f);
    layer.k.assign(static_cast<size_t>(kv_heads) * tokens * d, 0.f);
    layer.v.assign(static_cast<size_t>(kv_heads) * tokens * d, 0.f);
    ctx = hand_context(meta, {&layer}, prompt, tokens, seed);
  }
  HandShard(const HandShard&) = delete;
  HandShard& operator=(const HandShard&) = delete;

  void set_key(int kv_head, int t, const std::vector<float>& x) { set(layer.k, kv_head, t, x); }
  void set_query(int q_head, int t, const std::vector<float>& x) { set(layer.q, q_head, t, x); }

 private:
  void set(std::vector<float>& plane, int head, int t, const std::vector<float>& x) {
    std::copy(x.begin(), x.end(),
              plane.begin() + (static_cast<size_t>(head) * layer.num_tokens + t) * layer.head_dim);
  }
};

// Replay options that measure every decode step (memory checked at each).
inline ReplayOptions every_step() {
  ReplayOptions options;
  options.measure = MeasureRule::parse("all");
  return options;
}

// Replays `specs` over a synthetic trace written to `dir`.
inline std::vector<RunResult> replay_synth(const SynthConfig& config,
                                           const std::vector<std::string>& specs,
                                           const TempDir& dir, ReplayOptions options = {}) {
  const std::string path = dir.file("trace_" + std::to_string(config.seed) + ".h5");
  if (!std::filesystem::exists(path)) write_synth_trace(path, config);
  TraceReader reader(path);
  std::vector<PolicySpec> parsed;
  for (const auto& s : specs) parsed.push_back(PolicySpec::parse(s));
  return replay(reader, parsed, options);
}

inline double mean_rel_err(const RunResult& r) {
  double s = 0;
  for (const auto& x : r.steps) s += x.rel_err;
  return r.steps.empty() ? 0 : s / r.steps.size();
}
inline double mean_key_err(const RunResult& r) {
  double s = 0;
  for (const auto& x : r.kv) s += x.key_err;
  return r.kv.empty() ? 0 : s / r.kv.size();
}

}  // namespace kvsim::testing
