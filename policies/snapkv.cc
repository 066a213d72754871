// `snapkv` — SnapKV (Li et al., 2024, arXiv 2404.14469), as in the official
// code (FasterDecoding/SnapKV, snapkv/monkeypatch/snapkv_utils.py,
// SnapKVCluster.update_kv).
//
// Once, at the end of prefill, per (layer, kv head):
//   1. score every prompt token outside the observation window (the last
//      `window` prompt tokens) by the exact attention it receives from the
//      window's queries: the column sums of the last `window` prompt rows,
//      summed over the query heads of the kv head's group;
//   2. pool the scores along positions with a 1-D pooling of size `kernel`
//      (stride 1, kernel/2 padding: the official max_pool1d / avg_pool1d);
//   3. keep the (budget - window) tokens with the highest pooled score plus
//      the whole observation window; evict the rest.
// Decode tokens are appended and never evicted.
//
// Interpretations (methods.md leaves these open):
//   - pooling: `max` by default. The code's built-in default is avgpool with
//     kernel 5 and window 64, but every configuration shipped with the paper's
//     experiments (experiments/LongBench/config/*_w32_k7_maxpool.json) uses
//     window 32, kernel 7 and maxpool, which is also what methods.md's
//     defaults (32, 7) describe. `avg` divides by `kernel` including the
//     padding (PyTorch's count_include_pad=True), as the official call does.
//   - GQA: the official code repeats K/V per query head and selects per query
//     head (a group's heads then cache different tokens, growing the cache
//     group-fold). kvsim keeps one cache per kv head, so the group's scores are
//     summed before pooling (kvpress' SnapKVPress does the same, with a mean).
//   - budget: `budget` tokens when > 0, else ceil(ratio * P), at least 1. The
//     official code asserts budget > window; kvsim accepts any budget and, when
//     budget < window, shrinks the observation window to the last `budget`
//     prompt tokens (no token is selected by score). The counter
//     snapkv.window_clamped counts the (layer, kv head) pairs where that
//     happened. When the prompt (or a sliding-window layer's window) holds no
//     more than `budget` tokens, nothing is evicted, as the official code
//     leaves prompts shorter than its capacity alone.
//   - pooling runs over positions: an entry absent from the candidates (dropped
//     by an earlier evict stage) counts as score 0 for its neighbours.
//   - ties (equal pooled scores): the lower position is evicted first.
//   - composition: the engine gives every stage that asks for prefill
//     attention the column sums of its own row count (sim/engine.cc), so in
//     h2o+snapkv SnapKV still scores with its own `window` rows.
// Memory: what the store stage counts (fp16: 2*16*d bits per kept token):
// min(P_w, budget) + (t + 1 - P) tokens at decode step t, P_w the prompt
// tokens the layer holds.
#include <algorithm>

#include "policies/scorer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

class SnapKv final : public ScorerStage {
 public:
  SnapKv(const Params& p, const ShardContext& ctx)
      : ScorerStage(options(p, ctx), ctx),
        window_(p.get_int("window")),
        kernel_(static_cast<int>(p.get_int("kernel"))),
        pooling_(p.get_string("pooling") == "avg" ? evict::Pooling::kAvg : evict::Pooling::kMax) {}

  void report(std::map<std::string, double>& counters) const override {
    ScorerStage::report(counters);
    counters["snapkv.window_clamped"] += window_clamped_;
  }

 private:
  // Once, at prefill; the observation window is the protected recent window
  // (the base shrinks it to the budget) and scores with its own rows.
  static Options options(const Params& p, const ShardContext& ctx) {
    Options o;
    o.name = "snapkv";
    o.budget = evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), ctx.prompt_len);
    o.recent = p.get_int("window");
    o.observe = Observe::kSum;
    o.prefill_rows = p.get_int("window");
    return o;
  }

  // The window's attention, pooled over positions (absent entries count 0).
  void score(const ScoreView& view, std::span<double> scores) override {
    if (view.budget < window_) ++window_clamped_;
    pooled_attention_scores(view, kernel_, pooling_, scores);
  }

  int64_t window_;
  int kernel_;
  evict::Pooling pooling_;
  double window_clamped_ = 0;
};

PolicyInfo snapkv_info() {
  PolicyInfo info = policy_info<SnapKv>(
      "snapkv", StageKind::kEvict,
      "SnapKV: after prefill keep the prompt tokens the last `window` queries attend to most "
      "(pooled), plus that window",
      evict::budget_params(0.2));
  for (ParamSpec& spec : window_score_params(32, 7)) info.params.push_back(std::move(spec));
  info.check = [](const Params& p) {
    evict::check_budget("snapkv", p);
    check_odd_kernel("snapkv", p);
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(snapkv_info());
}  // namespace kvsim
