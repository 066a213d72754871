// `random` — the floor of eviction policies: keep a uniformly random subset of
// the budget's size, per (layer, kv head).
//
//   schedule=once  at the end of prefill keep `budget` prompt tokens drawn
//                  uniformly without replacement; decode tokens are appended
//                  and never evicted.
//   schedule=cap   at prefill as above, then at every decode step, when the
//                  cache holds more than `budget` entries, evict uniformly at
//                  random down to `budget`.
//
// Interpretations:
//   - budget: `budget` tokens when > 0, else ceil(ratio * P), at least 1.
//   - cap: the token arriving at step t is never evicted at its own step (a
//     real model computes the current token's key and value before any cache
//     is consulted, so its own query always sees it); it competes uniformly
//     with the others from the next step on. All cap-schedule policies in kvsim
//     (random, oracle, l2norm) follow this rule.
//   - randomness: one kvsim::Rng stream per (layer, kv head), seeded with
//     derive_seed(ShardContext::seed, local layer, kv head); ShardContext::seed
//     is derived from the run's --seed, the sequence and the layer group, so a
//     run is bit-identical for the same seed at any thread or rank count and
//     differs for another seed. Subsets are drawn by a partial Fisher-Yates
//     shuffle of the candidates (ascending positions).
// Memory: what the store stage counts (fp16: 2*16*d bits per kept token):
// once: min(P_w, budget) + (t + 1 - P) tokens at step t; cap: min(t+1, budget).
#include <algorithm>

#include "policies/scorer.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

class RandomEvict final : public ScorerStage {
 public:
  RandomEvict(const Params& p, const ShardContext& ctx)
      : ScorerStage(budget_schedule_options("random", p, ctx.prompt_len), ctx),
        num_kv_heads_(ctx.meta->num_kv_heads) {
    for (size_t l = 0; l < ctx.slots.size(); ++l) {
      for (int h = 0; h < num_kv_heads_; ++h) rngs_.emplace_back(derive_seed(ctx.seed, l, h));
    }
  }

 private:
  // Draws the evicted entries by a partial Fisher-Yates shuffle and scores
  // them 0, the others 1: the top-k then keeps exactly the undrawn ones.
  void score(const ScoreView& view, std::span<double> scores) override {
    const auto eligible = static_cast<int64_t>(view.candidates.size());
    const int64_t drop = eligible - static_cast<int64_t>(view.keep);
    Rng& rng = rngs_[view.local_layer * num_kv_heads_ + view.kv_head];
    std::vector<size_t> pool(view.candidates.size());
    for (size_t i = 0; i < pool.size(); ++i) pool[i] = i;
    std::fill(scores.begin(), scores.end(), 1.0);
    for (int64_t i = 0; i < drop; ++i) {  // pool[0, drop) is the sample
      const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(eligible - i)));
      std::swap(pool[i], pool[j]);
      scores[pool[i]] = 0.0;
    }
  }

  int num_kv_heads_;
  std::vector<Rng> rngs_;  // [layer * kv head]
};

PolicyInfo random_info() {
  return budget_schedule_policy<RandomEvict>(
      "random", "keep a uniformly random subset of the budget's size (seeded): the floor",
      "once: sample once after prefill, decode tokens appended; cap: evict at random down to "
      "the budget at every step");
}

}  // namespace
KVSIM_REGISTER_POLICY(random_info());
}  // namespace kvsim
