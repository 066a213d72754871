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
// prefill and at every decode step. An evicted token never returns (its score
// is never read again).
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
#include "policies/scorer.h"

namespace kvsim {
namespace {

class H2o final : public ScorerStage {
 public:
  H2o(const Params& p, const ShardContext& ctx) : ScorerStage(options(p, ctx), ctx) {}

 private:
  // The budget is the heavy hitters, kept besides the recent window; scores
  // are the attention accumulated over every prompt row and decode step.
  static Options options(const Params& p, const ShardContext& ctx) {
    const int64_t P = ctx.prompt_len;
    Options o;
    o.name = "h2o";
    o.schedule = evict::Schedule::kCap;
    o.budget = p.get_int("heavy_tokens") > 0 ? p.get_int("heavy_tokens")
                                             : evict::fraction_tokens(p.get_float("heavy"), P);
    o.recent = p.get_int("recent_tokens") > 0
                   ? p.get_int("recent_tokens")
                   : std::max<int64_t>(1, evict::fraction_tokens(p.get_float("recent"), P));
    o.protected_in_budget = false;
    o.observe = Observe::kSum;
    o.prefill_rows = -1;
    o.decode_attention = true;
    return o;
  }

  void score(const ScoreView& view, std::span<double> scores) override {
    for (size_t i = 0; i < view.candidates.size(); ++i) {
      scores[i] = view.attention[view.candidates[i]];
    }
  }
};

PolicyInfo h2o_info() {
  return policy_info<H2o>(
      "h2o", StageKind::kEvict,
      "Heavy-Hitter Oracle: keep the tokens with the most accumulated attention plus a recent "
      "window (H2O)",
      {
          ParamSpec::Float("heavy", 0.1, 0, 1,
                           "heavy hitters kept, as a fraction of the prompt: ceil(heavy*P)"),
          ParamSpec::Float("recent", 0.1, 0, 1,
                           "recent window, as a fraction of the prompt: max(1, ceil(recent*P))"),
          ParamSpec::Int("heavy_tokens", 0, 0, int64_t{1} << 30,
                         "heavy hitters in tokens; overrides heavy when > 0"),
          ParamSpec::Int(
              "recent_tokens", 0, 0, int64_t{1} << 30,
              "recent window in tokens (the newest included); overrides recent when > 0"),
      });
}

}  // namespace
KVSIM_REGISTER_POLICY(h2o_info());
}  // namespace kvsim
