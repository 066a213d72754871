// `oracle` — keep the tokens the RECORDED FUTURE queries attend to most. This is
// the one policy that looks ahead: it reads the trace's queries of steps that
// have not happened yet (ShardContext::layers[local]->query(qh, t') for any
// t'). Only a trace replay can compute it; it bounds what any eviction policy
// can retain at the same budget.
//
// Per (layer, kv head), the score of token i at the moment the cache is
// compressed is
//   S(i) = sum over future decode queries t' and the group's query heads j of
//          p_{t',j}(i),
// p_{t',j} the EXACT attention of query head j at step t' (softmax over every
// token <= t' inside the layer's sliding window, the trace's attn_scale), i.e.
// the attention mass token i will hold. "Future" means t' in [P, T) at
// prefill and t' in [t, T) at decode step t (the engine evicts before the
// step's query attends, so q_t is still in the future).
//
//   schedule=once  at prefill keep the `budget` prompt tokens of highest S;
//                  decode tokens are appended and never evicted. With every
//                  decode step measured this maximises, among all subsets of
//                  that size, the total attention mass retained over the
//                  group's query heads and the decode steps: a true upper
//                  bound for once-policies (snapkv, l2norm once, random once).
//   schedule=cap   at prefill as above; then at every decode step t, when the
//                  cache holds more than `budget` entries, evict down to
//                  `budget` keeping the highest S over [t, T). The arriving
//                  token is never evicted at its own step (its query always
//                  sees it, as in a real model; the same rule as random and
//                  l2norm cap). Greedy per step, so it is the natural
//                  fixed-budget reference for h2o/random/l2norm cap, not a
//                  proven optimum over all eviction sequences.
//
// Cost and memory: S over [P, T) is computed once per (layer, kv head), the
// first time its cache holds more than the budget (at prefill, unless the
// prompt fits), one exact attention row per decode step: O((T-P) * T * d * group)
// time, the cost of exact attention at every decode step. For cap, the suffix
// sums S over [t, T) are kept by subtracting row t-1 at step t (recomputed,
// not stored), doubling the time. Memory is O(T) doubles per (layer, kv head)
// plus one row of scratch: no T x T matrix is ever held.
// Interpretations: budget = `budget` tokens when > 0, else ceil(ratio * P), at
// least 1; ties (equal S): the lower position is evicted first; scores are
// accumulated in double.
// Memory: what the store stage counts (fp16: 2*16*d bits per kept token):
// once: min(P_w, budget) + (t + 1 - P) tokens at step t; cap: min(t+1, budget).
#include "policies/scorer.h"
#include "sim/base/attention.h"

namespace kvsim {
namespace {

class Oracle final : public ScorerStage {
 public:
  Oracle(const Params& p, const ShardContext& ctx)
      : ScorerStage(budget_schedule_options("oracle", p, ctx.prompt_len), ctx),
        meta_(ctx.meta),
        slots_(ctx.slots),
        layers_(ctx.layers),
        num_kv_heads_(ctx.meta->num_kv_heads),
        group_(ctx.group_size()),
        prompt_len_(ctx.prompt_len),
        num_tokens_(ctx.num_tokens),
        heads_(ctx.slots.size() * num_kv_heads_),
        memo_(ctx.memo) {}

 private:
  struct Head {
    std::vector<double> future;  // [T] S(i) over the query rows [first_row, T)
    int64_t first_row = 0;
  };

  // S over [step, T): every future decode row added once, then the rows that
  // are no longer in the future subtracted, in order (computed lazily, the
  // same operations whenever they run).
  void score(const ScoreView& view, std::span<double> scores) override {
    Head& head = heads_[view.local_layer * num_kv_heads_ + view.kv_head];
    if (head.future.empty()) {
      head.future.assign(static_cast<size_t>(num_tokens_), 0.0);
      for (int64_t t = prompt_len_; t < num_tokens_; ++t) {
        add_row(view.local_layer, view.kv_head, t, 1.0, head.future);
      }
      head.first_row = prompt_len_;
    }
    for (; head.first_row < view.step; ++head.first_row) {
      add_row(view.local_layer, view.kv_head, head.first_row, -1.0, head.future);
    }
    for (size_t i = 0; i < view.candidates.size(); ++i) {
      scores[i] = head.future[view.candidates[i]];
    }
  }

  // future[i] += sign * sum_j p_{t,j}(i): the exact attention of step t's
  // query heads of the group, over the keys <= t in the layer's window.
  void add_row(int local, int kv_head, int64_t t, double sign, std::vector<double>& future) {
    const int window = meta_->sliding_window[slots_[local]];
    const int64_t lo = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
    const size_t n = static_cast<size_t>(t - lo + 1);
    const std::vector<float>& probs = attention_row(local, kv_head, t, lo, n);
    for (int j = 0; j < group_; ++j) {
      const float* p = probs.data() + j * n;
      for (size_t i = 0; i < n; ++i) future[lo + i] += sign * p[i];
    }
  }

  // The group's exact attention at step t over keys [lo, lo + n): [group, n]. Every oracle
  // configuration of a unit needs the same rows: they come from the unit's memo when an
  // earlier one kept them (the same floats as computing them).
  const std::vector<float>& attention_row(int local, int kv_head, int64_t t, int64_t lo, size_t n) {
    const auto key = std::make_tuple(slots_[local], kv_head, t);
    if (memo_) {
      const auto it = memo_->rows.find(key);
      if (it != memo_->rows.end()) return it->second;
    }
    const LayerData& layer = *layers_[local];
    const int d = meta_->head_dim;
    qbuf_.resize(static_cast<size_t>(group_) * d);
    for (int j = 0; j < group_; ++j) {
      const float* q = layer.query(kv_head * group_ + j, static_cast<int>(t));
      std::copy_n(q, d, qbuf_.data() + static_cast<size_t>(j) * d);
    }
    scratch_.resize(group_ * n);
    score_rows(qbuf_.data(), group_, layer.key(kv_head, static_cast<int>(lo)), n, d,
               static_cast<float>(meta_->attn_scale), scratch_.data());
    for (int j = 0; j < group_; ++j) softmax_inplace(scratch_.data() + j * n, n);
    const size_t bytes = sizeof(float) * scratch_.size();
    if (memo_ && memo_->bytes + bytes <= AttentionRowMemo::kMaxBytes) {
      memo_->bytes += bytes;
      return memo_->rows.emplace(key, scratch_).first->second;
    }
    return scratch_;
  }

  const TraceMeta* meta_;
  std::vector<int> slots_;
  std::vector<const LayerData*> layers_;
  int num_kv_heads_, group_;
  int64_t prompt_len_, num_tokens_;
  std::vector<Head> heads_;  // [layer * kv head]
  AttentionRowMemo* memo_;   // the unit's, may be null
  std::vector<float> qbuf_, scratch_;
};

PolicyInfo oracle_info() {
  return budget_schedule_policy<Oracle>(
      "oracle",
      "LOOKS AHEAD: keep the tokens the recorded future queries attend to most (upper bound of "
      "eviction at a budget)",
      "once: select once after prefill by all future decode queries, decode tokens appended; "
      "cap: at every step evict down to the budget by the queries from that step on");
}

}  // namespace
KVSIM_REGISTER_POLICY(oracle_info());
}  // namespace kvsim
