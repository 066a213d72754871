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
#include "policies/evict_budget.h"
#include "policies/policy.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

class RandomEvict final : public EvictStage {
 public:
  RandomEvict(const Params& p, const ShardContext& ctx)
      : num_kv_heads_(ctx.meta->num_kv_heads),
        schedule_(evict::parse_schedule(p.get_string("schedule"))),
        budget_(evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), ctx.prompt_len)) {
    for (size_t l = 0; l < ctx.slots.size(); ++l) {
      for (int h = 0; h < num_kv_heads_; ++h) rngs_.emplace_back(derive_seed(ctx.seed, l, h));
    }
  }

  void select(const ArrivalView& view, std::vector<int32_t>& evict) override {
    if (!view.prefill && schedule_ == evict::Schedule::kOnce) return;
    const auto n = static_cast<int64_t>(view.candidates.size());
    if (n <= budget_) return;
    // At a decode step the newest candidate (the arriving token) is not eligible.
    const bool pin_newest = !view.prefill && view.candidates.back() == view.step;
    const int64_t eligible = pin_newest ? n - 1 : n;
    const int64_t drop = std::min(n - budget_, eligible);
    Rng& rng = rngs_[view.local_layer * num_kv_heads_ + view.kv_head];
    std::vector<int32_t> pool(view.candidates.begin(), view.candidates.begin() + eligible);
    for (int64_t i = 0; i < drop; ++i) {  // partial Fisher-Yates: pool[0, drop) is the sample
      const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(eligible - i)));
      std::swap(pool[i], pool[j]);
      evict.push_back(pool[i]);
    }
    evicted_ += static_cast<double>(drop);
  }

  void report(std::map<std::string, double>& counters) const override {
    counters["random.evicted_tokens"] += evicted_;
  }

 private:
  int num_kv_heads_;
  evict::Schedule schedule_;
  int64_t budget_;
  std::vector<Rng> rngs_;  // [layer * kv head]
  double evicted_ = 0;
};

PolicyInfo random_info() {
  PolicyInfo info;
  info.name = "random";
  info.kind = StageKind::kEvict;
  info.summary = "keep a uniformly random subset of the budget's size (seeded): the floor";
  info.params = evict::budget_params(0.2);
  info.params.push_back(evict::schedule_param(
      "once: sample once after prefill, decode tokens appended; cap: evict at random down to "
      "the budget at every step"));
  info.check = [](const Params& p) { evict::check_budget("random", p); };
  info.create = [](const Params& p, const ShardContext& ctx) {
    return std::make_unique<RandomEvict>(p, ctx);
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(random_info());
}  // namespace kvsim
