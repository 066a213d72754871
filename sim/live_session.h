// The live mode's C++ side (docs/closed-loop.md): one policy's cache for one sequence of a
// model that runs for real. The model produces each layer's post-RoPE Q/K/V as it goes (the
// prompt at once, then one token per step); the session keeps them in growing per-layer
// buffers, drives the policy's pipeline through the same ShardDriver that replay uses, and
// hands back, per layer, the cache the model attends over (kept positions and the rows as
// the store represents them: dequantized, merged, restored).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "policies/policy.h"
#include "sim/shard_driver.h"
#include "trace/trace.h"

namespace kvsim {

// The model's attention shape, as the live model reports it.
struct LiveModelShape {
  std::string model_name;
  int num_layers = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  std::vector<int> sliding_window;  // [num_layers], 0 = full attention
  double attn_scale = 0.0;
  StoredDType dtype = StoredDType::kFloat32;
};

// The trace metadata the policies see in live mode: every layer stored, in model order.
TraceMeta live_trace_meta(const LiveModelShape& shape);

// What one layer attends over now, per kv head, padded to the longest head:
// positions [Hkv, width] (-1 = padding), keys and values [Hkv, width, head_dim] (0 = padding).
struct LiveView {
  int64_t width = 0;
  std::vector<int64_t> lengths;  // [Hkv]
  std::vector<int32_t> positions;
  std::vector<float> keys, values;
};

// Memory the policy holds over every (layer, kv head), after the latest event.
struct LiveFootprint {
  int64_t bits = 0;         // data + meta bits as packed
  int64_t kept_tokens = 0;  // cache rows
  int64_t fp16_bits = 0;    // the uncompressed cache (fp16, clipped to each layer's window)
};

class LiveSession {
 public:
  // `sequence` and `seed` derive the stages' seeds as replay does (so `random` evicts the
  // same positions as a replay of the same sequence). `calibration`, when given, is the
  // trace that a stage's prepare hook reads (SKVQ); it must store every layer of the model.
  // Throws ConfigError for an unknown spec, one that does not fit the model, or a policy that
  // reads the future (`oracle`).
  LiveSession(const LiveModelShape& shape, const std::string& spec, int sequence,
              int64_t prompt_len, int64_t max_tokens, uint64_t seed = 0,
              const TraceReader* calibration = nullptr);
  ~LiveSession();
  LiveSession(const LiveSession&) = delete;  // the drivers point into the session
  LiveSession& operator=(const LiveSession&) = delete;

  // Layer `layer` produced `n` new tokens: q [Hq, n, d], k and v [Hkv, n, d], row-major.
  // First the prompt (n = prompt_len), then one token per call. When the last layer of the
  // layer's group has produced the tokens, the group's event runs (prefill or arrival),
  // followed, for stages that observe decode attention, by the attention of the new queries
  // over the caches (the same kernel as replay's).
  void append(int layer, const float* q, const float* k, const float* v, int64_t n);
  // What `layer` attends over at its newest token. Before its group's event (a layer of a
  // cross-layer group whose last layer has not produced the token yet): the cache as the
  // previous event left it, within the layer's window, plus the newest token's exact row.
  void view(int layer, LiveView& out) const;
  // Tokens `layer` has produced so far.
  int64_t tokens(int layer) const { return filled_.at(layer); }
  LiveFootprint footprint() const;
  const HeadCache& cache(int layer, int kv_head) const;
  const TraceMeta& meta() const { return meta_; }
  const PolicySpec& spec() const { return spec_; }

 private:
  void run_event(int group);

  TraceMeta meta_;
  PolicySpec spec_;
  int64_t prompt_len_, max_tokens_;
  std::vector<LayerData> raw_;                         // [L], capacity max_tokens
  std::vector<int64_t> filled_;                        // [L] tokens produced
  std::vector<std::vector<int>> groups_;               // layer groups of the policy
  std::vector<int> group_of_, local_of_;               // [L]
  std::vector<int64_t> inserted_;                      // [group] tokens the group's cache has seen
  std::vector<std::unique_ptr<ShardDriver>> drivers_;  // [group]
  std::vector<CacheAttention> attended_;               // feedback workspace
};

// The caches replay builds at prefill for `sequence` of `trace`: [slot * Hkv + kv head].
// For comparing the live mode's prefill with replay's (tests/python/test_live_replay.py).
std::vector<HeadCache> replay_prefill_caches(const TraceReader& trace, const std::string& spec,
                                             int sequence, uint64_t seed = 0);

}  // namespace kvsim
