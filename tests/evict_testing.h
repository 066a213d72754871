// Helpers for the eviction scorers' tests (TOVA, KeyDiff, AdaKV, PyramidKV,
// ExpectedAttention): exact attention in double precision over a set of
// positions, and a decode loop that drives one evict stage the way the engine
// does, with the attention over its own cache as feedback.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "policies/policy.h"
#include "test_util.h"

namespace kvsim::testing {

// Softmax of query head `qh` at token `t` over `positions` (scale from meta), in double.
inline std::vector<double> attention_row(const LayerData& L, const TraceMeta& meta, int qh, int t,
                                         const Positions& positions) {
  const int h = qh / meta.group_size(), d = L.head_dim;
  std::vector<double> s(positions.size());
  double mx = -1e300, z = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += double{L.query(qh, t)[c]} * L.key(h, positions[i])[c];
    s[i] = dot * meta.attn_scale;
    mx = std::max(mx, s[i]);
  }
  for (double& x : s) z += (x = std::exp(x - mx));
  for (double& x : s) x /= z;
  return s;
}

// The group's rows [group, positions] of kv head h at token t, as float (what
// observe_prefill / observe receive).
inline std::vector<float> group_rows(const LayerData& L, const TraceMeta& meta, int h, int t,
                                     const Positions& positions) {
  std::vector<float> out;
  for (int j = 0; j < meta.group_size(); ++j) {
    for (double a : attention_row(L, meta, h * meta.group_size() + j, t, positions)) {
      out.push_back(static_cast<float>(a));
    }
  }
  return out;
}

// Drives `stage` over one layer (local layer 0) from prefill to the last
// token as the engine does: at prefill every head observes its last `rows`
// prompt rows (when the stage asks), then prefill_layer(), then select(); at
// each decode step select() then, when asked, the attention of each head's
// own cache. `visit(t, caches)` sees the caches after each step.
inline void drive_layer(EvictStage& stage, const LayerData& L, const TraceMeta& meta, int prompt,
                        const std::function<void(int, const std::vector<Positions>&)>& visit) {
  const int H = meta.num_kv_heads;
  std::vector<Positions> caches(H, range(0, prompt));
  std::vector<ArrivalView> views(H);
  const int64_t rows = stage.prefill_attention_rows();
  for (int h = 0; h < H; ++h) {
    views[h].kv_head = h;
    views[h].step = prompt - 1;
    views[h].prefill = true;
    views[h].candidates = caches[h];
    views[h].raw = &L;
    if (rows == 0) continue;
    const int first = rows < 0 ? 0 : prompt - static_cast<int>(rows);
    std::vector<float> sums(static_cast<size_t>(meta.group_size()) * prompt, 0.f);
    for (int t = first; t < prompt; ++t) {
      const std::vector<float> r = group_rows(L, meta, h, t, range(0, t + 1));
      for (int j = 0; j < meta.group_size(); ++j) {
        for (int i = 0; i <= t; ++i) sums[j * prompt + i] += r[j * (t + 1) + i];
      }
    }
    stage.observe_prefill(0, h, caches[h], sums);
  }
  stage.prefill_layer(0, views);
  auto drop = [](Positions& cache, const Positions& evict) {
    Positions kept;
    std::set_difference(cache.begin(), cache.end(), evict.begin(), evict.end(),
                        std::back_inserter(kept));
    cache = kept;
  };
  for (int h = 0; h < H; ++h) drop(caches[h], select(stage, L, prompt - 1, true, caches[h], h));
  visit(prompt - 1, caches);
  for (int t = prompt; t < L.num_tokens; ++t) {
    for (int h = 0; h < H; ++h) {
      caches[h].push_back(t);
      drop(caches[h], select(stage, L, t, false, caches[h], h));
    }
    if (stage.needs_decode_attention()) {
      for (int h = 0; h < H; ++h)
        stage.observe(0, h, t, caches[h], group_rows(L, meta, h, t, caches[h]));
    }
    visit(t, caches);
  }
}

// A hand-made shard (HandShard's arguments) and the single evict stage of a
// spec built over it, for worked examples.
struct HandStage {
  HandShard s;
  Pipeline p;
  HandStage(int q_heads, int kv_heads, int d, int tokens, int prompt)
      : s(q_heads, kv_heads, d, tokens, prompt) {}
  void build(const std::string& spec) { p = Pipeline::create(PolicySpec::parse(spec), s.ctx, {}); }
  EvictStage& stage() { return *p.evicts[0]; }
};

// A shard context over slot `slot` of a synthetic sequence.
inline ShardContext synth_context(const TraceMeta& meta, const std::vector<LayerData>& layers,
                                  int slot, int prompt, int tokens) {
  ShardContext ctx;
  ctx.meta = &meta;
  ctx.slots = {slot};
  ctx.layers = {&layers[slot]};
  ctx.prompt_len = prompt;
  ctx.num_tokens = tokens;
  return ctx;
}

}  // namespace kvsim::testing
