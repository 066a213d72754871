// The sweep's cost model (probe_traits, estimate_unit_cost,
// estimate_block_overhead; docs/sweeps.md). Its results file is written by
// sim/sweep_results.cc. The sweep file is parsed in sim/sweep_spec.cc, the
// units planned in sim/sweep_plan.cc, and run by sim/sweep_main.cc.
#include "sim/sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "sim/base/errors.h"

namespace kvsim {

// ---------------------------------------------------------------------------
namespace {

int64_t present_tokens(int window, int64_t t) {
  return window > 0 ? std::min<int64_t>(t + 1, window) : t + 1;
}

// Weights of the cost model (multiply-adds per unit of work); see docs/sweeps.md.
constexpr double kStoreWeight = 8;  // per stored K/V element: encode, bookkeeping
constexpr double kReadWeight = 4;   // per Q/K/V element read and converted to float

}  // namespace

PolicyTraits probe_traits(const PolicySpec& spec, const TraceMeta& meta, const SequenceInfo& info) {
  try {
    std::vector<int> group;
    for (const auto& g : spec.layer_slot_groups(meta)) {
      if (g.size() > group.size()) group = g;
    }
    if (group.empty()) return {{-1}, {}, true, {}};
    std::vector<LayerData> dummy(group.size());
    ShardContext ctx;
    ctx.meta = &meta;
    ctx.sequence = 0;
    ctx.slots = group;
    for (size_t i = 0; i < group.size(); ++i) {
      dummy[i].slot = group[i];
      dummy[i].num_tokens = static_cast<int>(info.num_tokens);
      dummy[i].head_dim = meta.head_dim;
      ctx.layers.push_back(&dummy[i]);
    }
    ctx.prompt_len = info.prompt_len;
    ctx.num_tokens = info.num_tokens;
    const Pipeline pipeline = Pipeline::create(spec, ctx, {});
    PolicyTraits traits;
    for (size_t i = 0; i < pipeline.evicts.size(); ++i) {
      const int64_t rows = pipeline.evicts[i]->prefill_attention_rows();
      if (rows == 0) continue;
      (i == 0 ? traits.shared_prefill_rows : traits.prefill_rows).push_back(rows);
    }
    if (const int64_t rows = pipeline.store->prefill_attention_rows(); rows != 0) {
      (pipeline.evicts.empty() ? traits.shared_prefill_rows : traits.prefill_rows).push_back(rows);
    }
    traits.decode_attention = pipeline.needs_decode_attention();
    for (const auto& stage : pipeline.evicts) {
      if (const CacheBound bound = stage->max_cache_tokens(); bound.bounded()) {
        traits.cache_bounds.push_back(bound);
      }
    }
    return traits;
  } catch (...) {
    return {{-1}, {}, true, {}};  // e.g. a stage that needs prepared state: assume the most work
  }
}

int64_t PolicyTraits::prefill_rows_summary() const {
  int64_t sum = 0;
  for (const auto* list : {&prefill_rows, &shared_prefill_rows}) {
    for (int64_t rows : *list) {
      if (rows < 0) return -1;
      sum += rows;
    }
  }
  return sum;
}

double estimate_unit_cost(const TraceMeta& meta, const SequenceInfo& info,
                          const std::vector<int>& slots, const MeasureRule& measure,
                          const PolicyTraits& traits) {
  const int64_t P = info.prompt_len, T = info.num_tokens;
  const double hq = meta.num_q_heads, hkv = meta.num_kv_heads, d = meta.head_dim;
  const auto measured = measure.steps(P, T);
  double cost = 0;
  for (int slot : slots) {
    const int window = meta.sliding_window[slot];
    double measured_n = 0, all_n = 0, prefill_n = 0;
    auto kept = [&](int64_t t) {
      int64_t n = present_tokens(window, t);
      for (const CacheBound& bound : traits.cache_bounds) n = std::min(n, bound.at(t, P));
      return n;
    };
    for (int64_t t : measured) measured_n += kept(t);
    // Measured steps: compressed attention (scores + weighted sum), exact scores
    // and K/V reconstruction error, all over the kept entries: the exact cache,
    // or what the evict stages declare they keep at most.
    cost += (3 * hq + 2 * hkv) * d * measured_n;
    if (traits.decode_attention) {
      for (int64_t t = P; t < T; ++t) all_n += kept(t);
      cost += hq * d * (all_n - measured_n);
    }
    for (int64_t stage_rows : traits.prefill_rows) {
      const int64_t rows = stage_rows < 0 ? P : std::min<int64_t>(stage_rows, P);
      for (int64_t r = P - rows; r < P; ++r) prefill_n += present_tokens(window, r);
    }
    cost += 2 * hq * d * prefill_n;  // scores + softmax column sums
    cost += kStoreWeight * hkv * d * static_cast<double>(T);
  }
  return cost;
}

double estimate_block_overhead(const TraceMeta& meta, const SequenceInfo& info,
                               const std::vector<int>& slots, const MeasureRule& measure,
                               const std::vector<int64_t>& shared_prefill_rows) {
  const double hq = meta.num_q_heads, hkv = meta.num_kv_heads, d = meta.head_dim;
  const auto measured = measure.steps(info.prompt_len, info.num_tokens);
  double cost = 0;
  for (int slot : slots) {
    double measured_n = 0;
    for (int64_t t : measured) measured_n += present_tokens(meta.sliding_window[slot], t);
    cost += kReadWeight * (hq + 2 * hkv) * d * static_cast<double>(info.num_tokens);
    cost += 2 * hq * d * measured_n;  // exact attention: scores + weighted sum
    for (int64_t stage_rows : shared_prefill_rows) {
      const int64_t P = info.prompt_len;
      const int64_t rows = stage_rows < 0 ? P : std::min<int64_t>(stage_rows, P);
      double prefill_n = 0;
      for (int64_t r = P - rows; r < P; ++r) {
        prefill_n += present_tokens(meta.sliding_window[slot], r);
      }
      cost += 2 * hq * d * prefill_n;
    }
  }
  return cost;
}

}  // namespace kvsim
