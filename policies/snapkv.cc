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
#include "policies/evict_budget.h"
#include "policies/policy.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

class SnapKv final : public EvictStage {
 public:
  SnapKv(const Params& p, const ShardContext& ctx)
      : num_kv_heads_(ctx.meta->num_kv_heads),
        group_(ctx.group_size()),
        window_(p.get_int("window")),
        kernel_(static_cast<int>(p.get_int("kernel"))),
        pooling_(p.get_string("pooling") == "avg" ? evict::Pooling::kAvg : evict::Pooling::kMax),
        budget_(evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), ctx.prompt_len)),
        observed_(ctx.slots.size() * num_kv_heads_) {}

  int64_t prefill_attention_rows() const override { return window_; }

  void observe_prefill(int local, int kv_head, std::span<const int32_t> positions,
                       std::span<const float> attention) override {
    Observed& o = observed_[local * num_kv_heads_ + kv_head];
    const size_t n = positions.size();
    o.positions.assign(positions.begin(), positions.end());
    o.scores.assign(n, 0.0);
    for (int j = 0; j < group_; ++j) {
      for (size_t i = 0; i < n; ++i) o.scores[i] += attention[j * n + i];
    }
  }

  void select(const ArrivalView& view, std::vector<int32_t>& evict) override {
    if (!view.prefill) return;  // decode tokens are never evicted
    const auto n = static_cast<int64_t>(view.candidates.size());
    if (n <= budget_) return;
    const int64_t window = std::min(window_, budget_);
    if (window < window_) ++window_clamped_;
    const int64_t first_window = view.step - window + 1;  // observation window: [first_window, P)

    // Scores of the non-window candidates, laid out densely over positions.
    const Observed& o = observed_[view.local_layer * num_kv_heads_ + view.kv_head];
    std::vector<int32_t> prefix;
    int64_t in_window = 0;
    for (int32_t pos : view.candidates) {
      if (pos < first_window)
        prefix.push_back(pos);
      else
        ++in_window;
    }
    if (prefix.empty()) return;
    const int32_t lo = prefix.front();
    std::vector<double> dense(static_cast<size_t>(prefix.back() - lo + 1), 0.0);
    for (int32_t pos : prefix) {
      auto it = std::lower_bound(o.positions.begin(), o.positions.end(), pos);
      KVSIM_CHECK_MSG(it != o.positions.end() && *it == pos,
                      "snapkv: no prefill attention for position " << pos);
      dense[pos - lo] = o.scores[it - o.positions.begin()];
    }
    const std::vector<double> pooled = evict::pool1d(dense, kernel_, pooling_);
    std::vector<double> prefix_scores;
    prefix_scores.reserve(prefix.size());
    for (int32_t pos : prefix) prefix_scores.push_back(pooled[pos - lo]);
    const int64_t keep = std::max<int64_t>(0, budget_ - in_window);
    const size_t before = evict.size();
    evict::evict_all_but_top(prefix, prefix_scores, static_cast<size_t>(keep), evict);
    evicted_ += static_cast<double>(evict.size() - before);
  }

  void report(std::map<std::string, double>& counters) const override {
    counters["snapkv.evicted_tokens"] += evicted_;
    counters["snapkv.window_clamped"] += window_clamped_;
  }

 private:
  struct Observed {
    std::vector<int32_t> positions;  // [n] prefill candidates, ascending
    std::vector<double> scores;      // [n] window attention summed over the group
  };
  int num_kv_heads_, group_;
  int64_t window_;
  int kernel_;
  evict::Pooling pooling_;
  int64_t budget_;
  std::vector<Observed> observed_;  // [layer * kv head]
  double evicted_ = 0, window_clamped_ = 0;
};

PolicyInfo snapkv_info() {
  PolicyInfo info;
  info.name = "snapkv";
  info.kind = StageKind::kEvict;
  info.summary =
      "SnapKV: after prefill keep the prompt tokens the last `window` queries attend to most "
      "(pooled), plus that window";
  info.params = evict::budget_params(0.2);
  info.params.push_back(ParamSpec::Int("window", 32, 1, 1 << 20,
                                       "observation window: the last prompt queries that score, "
                                       "and the prompt tokens always kept"));
  info.params.push_back(
      ParamSpec::Int("kernel", 7, 1, 1023, "pooling size along positions (odd; 1 = no pooling)"));
  info.params.push_back(
      ParamSpec::Enum("pooling", "max", {"max", "avg"}, "1-D pooling of the scores"));
  info.check = [](const Params& p) {
    evict::check_budget("snapkv", p);
    if (p.get_int("kernel") % 2 == 0) {
      throw ConfigError("policy 'snapkv': kernel=" + std::to_string(p.get_int("kernel")) +
                        " must be odd (the pooling is centred: kernel/2 tokens on each side)");
    }
  };
  info.create = [](const Params& p, const ShardContext& ctx) {
    return std::make_unique<SnapKv>(p, ctx);
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(snapkv_info());
}  // namespace kvsim
