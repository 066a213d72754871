// `h2o` — Heavy-Hitter Oracle (Zhang et al., 2023, arXiv 2306.14048), as in
// the official real-drop code (FMInference/H2O, h2o_hf/utils_real_drop,
// H2OKVCache_LayerWise).
//
// Per (layer, kv head), each token's score is the attention it has received,
// accumulated over every query so far:
//   - at prefill, every prompt row of the exact causal attention
//     (prefill_attention_rows() = -1), summed over the rows;
//   - at every decode step, the attention of the step's query over the
//     policy's OWN cache (needs_decode_attention()), what a real system sees.
// In both cases the scores of the query heads of the kv head's group are
// summed (the official code is per head, MHA; with GQA one kv head serves the
// whole group, so its entries are scored by the whole group).
// The cache keeps the `recent` most recent positions (the newest included) and
// the `heavy` highest-scoring of the older ones; everything else is evicted at
// prefill and at every decode step. An evicted token's score is forgotten (set
// to 0) and the token never returns.
//
// Interpretations (methods.md leaves these open):
//   - budgets: heavy = ceil(heavy * P), recent = max(1, ceil(recent * P)), P the
//     prompt length, unless heavy_tokens / recent_tokens (> 0) give them in
//     tokens. ceil is taken robustly (0.1 * 60 is 6 tokens).
//   - ordering: the engine evicts BEFORE the step's query attends, so the query
//     of step t sees exactly heavy + recent entries, and the scores used to
//     select at step t are those accumulated up to step t-1 (the new token is
//     in the recent window anyway). The official code attends first over
//     (cache + new token) and trims afterwards, i.e. its query sees one entry
//     more; the kept sets follow the same rule.
//   - "recent" is positional: positions > t - recent. In a sliding-window layer
//     the window's own limit applies on top.
//   - ties (equal scores) are broken deterministically: the lower position is
//     evicted first.
//   - if another evict stage runs before h2o, the prefill scores are those of
//     the entries it left, and decode scores accrue only to entries in the
//     final cache.
// Memory: what the store stage counts for the kept entries (fp16 by default:
// 2*16*d bits per kept token); at most heavy + recent tokens per (layer, kv head).
// Cost: prefill attention of every prompt row, O(P^2 d) per kv head, plus the
// policy's own attention at every decode step.
#include <cmath>

#include "policies/evict_budget.h"
#include "policies/policy.h"

namespace kvsim {
namespace {

class H2o final : public EvictStage {
 public:
  H2o(const Params& p, const ShardContext& ctx)
      : num_kv_heads_(ctx.meta->num_kv_heads), group_(ctx.group_size()) {
    const int64_t P = ctx.prompt_len;
    heavy_ = p.get_int("heavy_tokens") > 0 ? p.get_int("heavy_tokens")
                                           : evict::fraction_tokens(p.get_float("heavy"), P);
    recent_ = p.get_int("recent_tokens") > 0
                  ? p.get_int("recent_tokens")
                  : std::max<int64_t>(1, evict::fraction_tokens(p.get_float("recent"), P));
    scores_.assign(ctx.slots.size() * num_kv_heads_,
                   std::vector<double>(static_cast<size_t>(ctx.num_tokens), 0.0));
  }

  int64_t prefill_attention_rows() const override { return -1; }
  bool needs_decode_attention() const override { return true; }

  void observe_prefill(int local, int kv_head, std::span<const int32_t> positions,
                       std::span<const float> attention) override {
    accumulate(local, kv_head, positions, attention);
  }
  void observe(int local, int kv_head, int64_t, std::span<const int32_t> positions,
               std::span<const float> probs) override {
    accumulate(local, kv_head, positions, probs);
  }

  void select(const ArrivalView& view, std::vector<int32_t>& evict) override {
    std::vector<double>& score = scores_[view.local_layer * num_kv_heads_ + view.kv_head];
    const int64_t oldest_recent = view.step - recent_ + 1;
    std::vector<int32_t> old;
    std::vector<double> old_scores;
    for (int32_t pos : view.candidates) {
      if (pos < oldest_recent) {
        old.push_back(pos);
        old_scores.push_back(score[pos]);
      }
    }
    const size_t before = evict.size();
    evict::evict_all_but_top(old, old_scores, static_cast<size_t>(heavy_), evict);
    for (size_t i = before; i < evict.size(); ++i) score[evict[i]] = 0.0;  // forgotten
    evicted_ += static_cast<double>(evict.size() - before);
  }

  void report(std::map<std::string, double>& counters) const override {
    counters["h2o.evicted_tokens"] += evicted_;
  }

 private:
  void accumulate(int local, int kv_head, std::span<const int32_t> positions,
                  std::span<const float> attention) {
    std::vector<double>& score = scores_[local * num_kv_heads_ + kv_head];
    const size_t n = positions.size();
    for (int j = 0; j < group_; ++j) {
      for (size_t i = 0; i < n; ++i) score[positions[i]] += attention[j * n + i];
    }
  }

  int num_kv_heads_, group_;
  int64_t heavy_ = 0, recent_ = 1;
  std::vector<std::vector<double>> scores_;  // [layer * kv head][position] accumulated attention
  double evicted_ = 0;
};

PolicyInfo h2o_info() {
  PolicyInfo info;
  info.name = "h2o";
  info.kind = StageKind::kEvict;
  info.summary =
      "Heavy-Hitter Oracle: keep the tokens with the most accumulated attention plus a recent "
      "window (H2O)";
  info.params = {
      ParamSpec::Float("heavy", 0.1, 0, 1,
                       "heavy hitters kept, as a fraction of the prompt: ceil(heavy*P)"),
      ParamSpec::Float("recent", 0.1, 0, 1,
                       "recent window, as a fraction of the prompt: max(1, ceil(recent*P))"),
      ParamSpec::Int("heavy_tokens", 0, 0, int64_t{1} << 30,
                     "heavy hitters in tokens; overrides heavy when > 0"),
      ParamSpec::Int("recent_tokens", 0, 0, int64_t{1} << 30,
                     "recent window in tokens (the newest included); overrides recent when > 0"),
  };
  info.create = [](const Params& p, const ShardContext& ctx) {
    return std::make_unique<H2o>(p, ctx);
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(h2o_info());
}  // namespace kvsim
