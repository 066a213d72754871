// `tova` — Token Omission Via Attention (Oren et al., 2024, arXiv 2401.06104,
// "Transformers are Multi-State RNNs"), as in the official code
// (schwartz-lab-NLP/TOVA, src/tova_cache.py) and kvpress' TOVAPress.
//
// A cache of `N` tokens per layer (the "multi-state size"). A token's score is
// the attention the NEWEST query gives it, averaged over every query head of
// the layer (granularity=layer, both codes), so every kv head of a layer keeps
// the same tokens; granularity=head uses the kv head's own group mean.
//   - prefill: if P > N, keep the N best under row P-1 of the causal prefill
//     attention (the last prompt query, its own weight included);
//   - decode: kvsim evicts before the step's query attends, so at step t the
//     stage trims back to N the entries step t-1's query saw, by that query's
//     attention over the policy's own cache (the engine's feedback); token t
//     then arrives and is never evicted at its own step. Every query sees N + 1
//     entries, as in the official code (attend over N + itself, then drop the
//     lowest, which may be the newest).
// No sinks, no recent window, no pooling. Ties: the lower position is evicted.
//
// Interpretations (methods.md marks these open):
//   - granularity: `layer` by default (both codes); `head` for head-wise
//     selection.
//   - N excludes the arriving token: a query attends over N + 1 entries and a
//     measured step holds min(t+1, N+1) tokens. Budgets of policies that count
//     the arriving token (snapkv, keydiff, l2norm cap) are one lower at equal
//     memory.
//   - layer mean with an earlier evict stage: a kv head contributes to a
//     position only when its own latest query saw it (else 0).
// Memory: what the store counts (fp16: 2*16*d bits per kept token):
// min(t+1, N+1) tokens per (layer, kv head) at a measured step.
#include <algorithm>

#include "policies/scorer.h"

namespace kvsim {
namespace {

class Tova final : public ScorerStage {
 public:
  Tova(const Params& p, const ShardContext& ctx)
      : ScorerStage(options(p, ctx), ctx),
        layer_mean_(p.get_string("granularity") == "layer"),
        query_heads_(ctx.meta->num_q_heads),
        prompt_len_(ctx.prompt_len),
        latest_(ctx.slots.size(), std::vector<double>(static_cast<size_t>(ctx.num_tokens), 0.0)),
        latest_step_(ctx.slots.size(), -1) {}

  void observe_prefill(int local_layer, int kv_head, std::span<const int32_t> positions,
                       std::span<const float> attention) override {
    ScorerStage::observe_prefill(local_layer, kv_head, positions, attention);
    record_layer(local_layer, prompt_len_ - 1, positions, attention);
  }
  void observe(int local_layer, int kv_head, int64_t step, std::span<const int32_t> positions,
               std::span<const float> probs) override {
    ScorerStage::observe(local_layer, kv_head, step, positions, probs);
    record_layer(local_layer, step, positions, probs);
  }

 private:
  // The budget is N besides the arriving token (nothing else is protected);
  // scores are the newest query's attention: row P-1 at prefill, the own
  // cache's attention at every decode step.
  static Options options(const Params& p, const ShardContext& ctx) {
    Options o;
    o.name = "tova";
    o.schedule = evict::Schedule::kCap;
    o.budget = evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), ctx.prompt_len);
    o.protected_in_budget = false;
    o.observe = Observe::kLatest;
    o.prefill_rows = 1;
    o.decode_attention = true;
    return o;
  }

  // The layer's latest query attention, summed over every query head: a new
  // step's first observation clears the previous step's.
  void record_layer(int local_layer, int64_t step, std::span<const int32_t> positions,
                    std::span<const float> attention) {
    std::vector<double>& row = latest_[local_layer];
    if (latest_step_[local_layer] != step) {
      std::fill(row.begin(), row.end(), 0.0);
      latest_step_[local_layer] = step;
    }
    const size_t n = positions.size(), group = attention.size() / std::max<size_t>(n, 1);
    for (size_t j = 0; j < group; ++j) {
      for (size_t i = 0; i < n; ++i) row[positions[i]] += attention[j * n + i];
    }
  }

  // Layer: the mean over the layer's query heads; head: the group's mean.
  void score(const ScoreView& view, std::span<double> scores) override {
    for (size_t i = 0; i < view.candidates.size(); ++i) {
      const int32_t pos = view.candidates[i];
      scores[i] = layer_mean_ ? latest_[view.local_layer][pos] / query_heads_
                              : view.attention[pos] / view.group;
    }
  }

  bool layer_mean_;
  int query_heads_;
  int64_t prompt_len_;
  std::vector<std::vector<double>> latest_;  // [layer][position]: sum over query heads
  std::vector<int64_t> latest_step_;         // [layer]: the step `latest_` holds
};

PolicyInfo tova_info() {
  PolicyInfo info = policy_info<Tova>(
      "tova", StageKind::kEvict,
      "TOVA: keep the N tokens the newest query attends to most (mean over the layer's query "
      "heads); N excludes the arriving token",
      evict::budget_params(0.2));
  info.params.push_back(ParamSpec::Enum(
      "granularity", "layer", {"layer", "head"},
      "layer: one score per layer, the mean over every query head (official); head: each kv "
      "head by its group's mean"));
  info.check = [](const Params& p) { evict::check_budget("tova", p); };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(tova_info());
}  // namespace kvsim
