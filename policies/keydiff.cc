// `keydiff` — key-similarity eviction (Park et al., 2025, arXiv 2504.15364,
// "KeyDiff"), as kvpress' KeyDiffPress (kvpress/presses/keydiff_press.py) and,
// block-wise, its BlockPress (kvpress/presses/block_press.py).
//
// Attention-free, per (layer, kv head), over a candidate set C (the cached keys
// plus the arriving ones): the anchor is the mean of the normalized keys,
// mu = (1/|C|) sum_{j in C} k_j/|k_j|, and a token scores s_i = -cos(k_i, mu):
// the N keys LEAST similar to the anchor stay (with their values). Keys are the
// trace's post-RoPE keys; no query is read; GQA is moot (keys are per kv head).
//   - prefill, block=B > 0 (the paper's setting): positions 0..N-1 are kept
//     unscored; each later block of B prompt tokens gives C = kept + block, mu
//     is recomputed over C and the top N of C stay. block=0: one shot over the
//     whole prompt (KeyDiffPress alone).
//   - decode, schedule=cap (default): once the cache, arriving token included,
//     exceeds N, mu is recomputed over it and the lowest older tokens go, down
//     to N (the arriving token is never evicted at its own step). schedule=once
//     compresses the prompt only.
// A zero key has cosine 0; a zero anchor gives every token 0 (a tie).
// Ties: the lower position is evicted first.
//
// Interpretations (methods.md marks these open):
//   - block-wise prefill in a replay changes only WHICH tokens are kept: the
//     recorded Q/K/V come from a full prefill (kvpress' BlockPress has the same
//     limit and says so).
//   - decode cadence: every step (the recommended reading).
//   - `window` (default 0): the newest positions protected, inside the budget;
//     the anchor includes them.
// Memory: what the store counts (fp16: 2*16*d bits per kept token):
// min(t+1, N) tokens at step t (cap); min(P_w, N) + (t+1-P) (once).
#include <algorithm>
#include <cmath>

#include "policies/scorer.h"

namespace kvsim {
namespace {

class KeyDiff final : public ScorerStage {
 public:
  KeyDiff(const Params& p, const ShardContext& ctx)
      : ScorerStage(options(p, ctx), ctx), block_(p.get_int("block")) {}

 private:
  static Options options(const Params& p, const ShardContext& ctx) {
    Options o = budget_schedule_options("keydiff", p, ctx.prompt_len);
    o.recent = p.get_int("window");
    return o;
  }

  // k / |k| in double (zero stays zero).
  void unit_key(const LayerData& raw, int kv_head, int32_t pos, std::vector<double>& u) const {
    const float* k = raw.key(kv_head, pos);
    const int d = raw.head_dim;
    const double norm = std::sqrt(evict::squared_norm(k, d));
    u.assign(static_cast<size_t>(d), 0.0);
    if (norm == 0) return;
    for (int c = 0; c < d; ++c) u[c] = k[c] / norm;
  }

  // -cos(k_i, mu) for every entry of `scored`, mu the mean unit key over `anchor_set`.
  void dissimilarity(const LayerData& raw, int kv_head, std::span<const int32_t> anchor_set,
                     std::span<const int32_t> scored, std::span<double> out) {
    const int d = raw.head_dim;
    mu_.assign(static_cast<size_t>(d), 0.0);
    for (int32_t pos : anchor_set) {
      unit_key(raw, kv_head, pos, unit_);
      for (int c = 0; c < d; ++c) mu_[c] += unit_[c];
    }
    double mu_norm = 0;
    for (double& x : mu_) {
      x /= static_cast<double>(anchor_set.size());
      mu_norm += x * x;
    }
    mu_norm = std::sqrt(mu_norm);
    for (size_t i = 0; i < scored.size(); ++i) {
      if (mu_norm == 0) {
        out[i] = 0;
        continue;
      }
      unit_key(raw, kv_head, scored[i], unit_);
      double dot = 0;
      for (int c = 0; c < d; ++c) dot += unit_[c] * mu_[c];
      out[i] = -(dot / mu_norm) + 0.0;  // + 0.0: a zero key scores +0, not -0
    }
  }

  void score(const ScoreView& view, std::span<double> scores) override {
    if (!view.prefill || block_ == 0) {
      dissimilarity(*view.raw, view.kv_head, view.cache, view.candidates, scores);
      return;
    }
    // Block-wise: the first `keep` entries, then one block at a time.
    const size_t keep = view.keep, n = view.candidates.size();
    std::vector<int32_t> kept(view.candidates.begin(), view.candidates.begin() + keep), pool;
    std::vector<double> pool_scores;
    std::vector<int32_t> dropped;
    for (size_t start = keep; start < n; start += static_cast<size_t>(block_)) {
      const size_t end = std::min(n, start + static_cast<size_t>(block_));
      pool = kept;
      pool.insert(pool.end(), view.candidates.begin() + start, view.candidates.begin() + end);
      pool_scores.assign(pool.size(), 0.0);
      dissimilarity(*view.raw, view.kv_head, pool, pool, pool_scores);
      dropped.clear();
      evict::evict_all_but_top(pool, pool_scores, keep, dropped);
      kept.clear();
      for (size_t i = 0; i < pool.size(); ++i) {
        if (std::find(dropped.begin(), dropped.end(), pool[i]) == dropped.end()) {
          kept.push_back(pool[i]);
        }
      }
    }
    // The survivors score 1, every other entry 0: the base keeps exactly them.
    for (size_t i = 0; i < n; ++i) {
      scores[i] = std::binary_search(kept.begin(), kept.end(), view.candidates[i]) ? 1.0 : 0.0;
    }
  }

  int64_t block_;
  std::vector<double> mu_, unit_;  // scratch
};

PolicyInfo keydiff_info() {
  PolicyInfo info = policy_info<KeyDiff>(
      "keydiff", StageKind::kEvict,
      "KeyDiff: keep the keys least similar (cosine) to the mean normalized key; attention-free",
      evict::budget_params(0.2));
  info.params.push_back(ParamSpec::Int(
      "block", 128, 0, 1 << 20,
      "prefill in blocks of this many prompt tokens (the paper's setting); 0 = one shot"));
  info.params.push_back(ParamSpec::Int("window", 0, 0, 1 << 20,
                                       "newest positions never evicted (inside the budget)"));
  info.params.push_back(ParamSpec::Enum(
      "schedule", "cap", {"once", "cap"},
      "cap: at every step evict down to the budget (decode included); once: prefill only"));
  info.check = [](const Params& p) { evict::check_budget("keydiff", p); };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(keydiff_info());
}  // namespace kvsim
