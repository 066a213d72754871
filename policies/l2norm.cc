// `l2norm` — L2-norm eviction (Devoto et al., 2024, arXiv 2406.11430,
// "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression";
// KnormPress in NVIDIA kvpress). Per (layer, kv head), keep the tokens whose key
// has the LOWEST L2 norm and evict the rest (key and value). The paper's
// finding: a key's norm is negatively correlated with the attention the token
// later receives. There is no explicit protection of sinks or recent tokens
// (sinks usually have low norms and survive anyway). Norms are those of the
// trace's raw keys (post-RoPE; RoPE is a rotation, so the norm is the same).
//
//   schedule=once  at the end of prefill keep ceil(keep_ratio * P) prompt
//                  tokens; decode tokens are appended uncompressed (the
//                  paper's passkey / needle setting).
//   schedule=cap   at prefill and at every decode step, once the cache holds
//                  more than `cap` entries (cap=0: ceil(keep_ratio * P)),
//                  evict the highest-norm entries down to `cap` (the
//                  perplexity setting).
// Layers whose ORIGINAL id (ShardContext::original_layer) is in `skip` are
// kept whole.
//
// Interpretations:
//   - skip defaults to [0,1], as the official repository's README example and
//     its quick perplexity script (alessiodevoto/l2compress: skip_layers=[0, 1])
//     do; kvpress' KnormPress skips no layer (skip=[] reproduces it).
//   - cap schedule: the official perplexity loop prunes AFTER each forward pass
//     to ceil(keep_ratio * len) once the cache reaches `prune_after` tokens, so
//     its cache oscillates between the two sizes; methods.md asks for a fixed
//     size cap, which this implements. The token arriving at step t is never
//     evicted at its own step (in the official loop it takes part in its own
//     forward pass before the cache is pruned); from the next step on it
//     competes by norm like any other. Same rule as random and oracle cap.
//   - `cap` > 0 with schedule=once has no meaning and is refused.
//   - ties (equal norms): the lower position is evicted first.
// Memory: 16 bits per kept element with the default fp16 store
// (2*16*d bits per kept token), nothing else. Kept tokens per (layer, kv head):
// once: min(P_w, ceil(keep_ratio*P)) + (t + 1 - P) at step t; cap:
// min(t+1, cap); a skipped layer holds t+1 (its window, if sliding).
#include <algorithm>

#include "policies/scorer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

class L2Norm final : public ScorerStage {
 public:
  L2Norm(const Params& p, const ShardContext& ctx)
      : ScorerStage(options(p, ctx), ctx), num_kv_heads_(ctx.meta->num_kv_heads) {
    const auto& skip = p.get_int_list("skip");
    for (size_t l = 0; l < ctx.slots.size(); ++l) {
      const int id = ctx.original_layer(static_cast<int>(l));
      if (std::find(skip.begin(), skip.end(), id) == skip.end()) continue;
      for (int h = 0; h < ctx.meta->num_kv_heads; ++h) set_budget(static_cast<int>(l), h, kKeepAll);
    }
  }

 private:
  static Options options(const Params& p, const ShardContext& ctx) {
    const int64_t cap = p.get_int("cap");
    Options o;
    o.name = "l2norm";
    o.schedule = evict::parse_schedule(p.get_string("schedule"));
    o.budget = cap > 0 ? cap
                       : std::max<int64_t>(
                             1, evict::fraction_tokens(p.get_float("keep_ratio"), ctx.prompt_len));
    return o;
  }

  // -|k|^2: the lowest norms score highest. A position's norm is computed once per (layer, kv
  // head) and kept: the cap schedule scores every cached token again at every step.
  void score(const ScoreView& view, std::span<double> scores) override {
    const int d = view.raw->head_dim;
    const size_t slot = static_cast<size_t>(view.local_layer) * num_kv_heads_ + view.kv_head;
    if (norms_.size() <= slot) norms_.resize(slot + 1);
    std::vector<double>& norm = norms_[slot];
    for (size_t i = 0; i < view.candidates.size(); ++i) {
      const size_t pos = static_cast<size_t>(view.candidates[i]);
      while (norm.size() <= pos) {  // positions arrive in order: fill up to pos
        norm.push_back(
            -evict::squared_norm(view.raw->key(view.kv_head, static_cast<int>(norm.size())), d));
      }
      scores[i] = norm[pos];
    }
  }

  int num_kv_heads_;
  std::vector<std::vector<double>> norms_;  // [local layer * kv heads + kv head][position]
};

PolicyInfo l2norm_info() {
  PolicyInfo info = policy_info<L2Norm>(
      "l2norm", StageKind::kEvict,
      "keep the tokens whose key has the lowest L2 norm (KnormPress, arXiv 2406.11430)",
      {
          ParamSpec::Float("keep_ratio", 0.5, 0, 1,
                           "tokens kept, as a fraction of the prompt: ceil(keep_ratio*P)"),
          ParamSpec::Int("cap", 0, 0, int64_t{1} << 30,
                         "schedule=cap: cache size in tokens; 0 = ceil(keep_ratio*P)"),
          ParamSpec::IntList(
              "skip", "[0,1]", 0, 1 << 20,
              "original layer ids kept whole (official scripts: [0,1]; kvpress: [])"),
          evict::schedule_param(
              "once: compress once after prefill, decode tokens appended; cap: evict the "
              "highest-norm tokens down to the cap at every step"),
      });
  info.check = [](const Params& p) {
    if (p.get_string("schedule") == "once" && p.get_int("cap") > 0) {
      throw ConfigError(
          "policy 'l2norm': cap=" + std::to_string(p.get_int("cap")) +
          " applies only to schedule=cap; schedule=once keeps ceil(keep_ratio*P) prompt tokens");
    }
    if (p.get_float("keep_ratio") <= 0 && p.get_int("cap") <= 0) {
      throw ConfigError(
          "policy 'l2norm': keep_ratio=0 leaves an empty cache; give keep_ratio in (0, 1] or "
          "(with schedule=cap) cap > 0");
    }
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(l2norm_info());
}  // namespace kvsim
