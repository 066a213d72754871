// `expected_attention` — scores from the statistics of future queries, in
// closed form (NVIDIA kvpress, kvpress/presses/expected_attention_press.py;
// arXiv 2510.00636). Once, at the end of prefill, per (layer, kv head):
//   1. per query head of the group, the pre-RoPE queries q~ (the trace's queries
//      rotated back by their position, policies/rope.h) of positions
//      n_sink..P-1 (or the last stats_window of them): mean mu and covariance
//      Sigma = (1/n) sum (q~ - mu)(q~ - mu)^T;
//   2. RoPE averaged over the future: Rbar = (1/n_f) sum_{j<n_f} R(P + j)
//      (each layer's rotation from the trace, Rope::for_slot);
//      mu' = Rbar mu, Sigma' = Rbar Sigma Rbar^T;
//   3. per cached post-RoPE key k_i past the sinks:
//      l_i = s mu'.k_i + s^2 k_i^T Sigma' k_i / 2 (log E[exp(s q.k_i)] for a
//      Gaussian q; s the trace's attn_scale), a = softmax_i(l) over those keys;
//   4. the kv head's score: the group mean of a, then s_i = (a_i + eps) |v_i|_2;
//   5. the first n_sink positions are kept (inside the budget); the top
//      budget - n_sink of the others stay.
// Decode tokens are appended and never evicted.
//
// Interpretations (methods.md marks these open):
//   - scale: the trace's attn_scale s (kvpress hard-codes 1/sqrt(d); the same
//     for models that use it; Gemma 3 differs).
//   - p0 = P, the absolute position of the first future token.
//   - the value norm |v| stands for the paper's expected output through W_O
//     (traces hold no W_O).
//   - stats_window = n: the last n post-sink prompt queries (the "recent
//     queries" reading); 0 = every post-sink prompt query (kvpress).
//   - head-adaptive budgets: `adakv:inner=expected_attention`.
//   - sliding-window layers (Gemma 3's local layers) are kept whole, as kvpress
//     compresses only the full-attention layers there.
// Memory: eviction only (fp16: 2*16*d bits per kept token): min(P_w, budget) +
// (t + 1 - P) tokens. The statistics (d + d*d per query head) are scoring state,
// reported as the counter expected_attention.stats_values.
#include <algorithm>
#include <cmath>

#include "policies/rope.h"
#include "policies/scorer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

class ExpectedAttention final : public ScorerStage {
 public:
  ExpectedAttention(const Params& p, const ShardContext& ctx)
      : ScorerStage(options(p, ctx), ctx),
        sinks_(p.get_int("n_sink")),
        stats_window_(p.get_int("stats_window")),
        covariance_(p.get_bool("use_covariance")),
        vnorm_(p.get_bool("use_vnorm")),
        epsilon_(p.get_float("epsilon")),
        scale_(ctx.meta->attn_scale) {
    for (size_t l = 0; l < ctx.slots.size(); ++l) {
      ropes_.push_back(Rope::for_slot(*ctx.meta, ctx.slots[l]));
      future_.push_back(ropes_.back().mean_rotation(ctx.prompt_len, p.get_int("n_future")));
      if (ctx.meta->sliding_window[ctx.slots[l]] == 0) continue;
      for (int h = 0; h < ctx.meta->num_kv_heads; ++h) {
        set_budget(static_cast<int>(l), h, kKeepAll);
      }
    }
  }

  void report(std::map<std::string, double>& counters) const override {
    ScorerStage::report(counters);
    counters["expected_attention.stats_values"] += stats_values_;
  }

 private:
  static Options options(const Params& p, const ShardContext& ctx) {
    Options o;
    o.name = "expected_attention";
    o.budget = evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), ctx.prompt_len);
    o.sinks = p.get_int("n_sink");
    return o;
  }

  // mu' and Sigma' (row-major d x d) of query head `qh` of local layer `layer` from its
  // pre-RoPE prompt queries.
  void statistics(const LayerData& raw, int layer, int qh, int64_t last, std::vector<double>& mu,
                  std::vector<double>& sigma) {
    const int d = raw.head_dim;
    const Rope& rope = ropes_[layer];
    const MeanRotation& future = future_[layer];
    int64_t first = std::min(sinks_, last);
    if (stats_window_ > 0) first = std::max(first, last + 1 - stats_window_);
    const auto n = static_cast<double>(last + 1 - first);
    std::vector<std::vector<double>> pre(static_cast<size_t>(last + 1 - first),
                                         std::vector<double>(d));
    mu.assign(d, 0.0);
    for (int64_t t = first; t <= last; ++t) {
      std::vector<double>& q = pre[t - first];
      rope.rotate(raw.query(qh, static_cast<int>(t)), q.data(), t, /*inverse=*/true);
      for (int c = 0; c < d; ++c) mu[c] += q[c];
    }
    for (double& x : mu) x /= n;
    sigma.assign(static_cast<size_t>(d) * d, 0.0);
    if (covariance_) {
      for (const auto& q : pre) {
        for (int a = 0; a < d; ++a) {
          for (int b = 0; b < d; ++b) sigma[a * d + b] += (q[a] - mu[a]) * (q[b] - mu[b]);
        }
      }
      for (double& x : sigma) x /= n;
      // Sigma' = Rbar Sigma Rbar^T: rotate every column, then every row.
      std::vector<double> line(d);
      for (int b = 0; b < d; ++b) {
        for (int a = 0; a < d; ++a) line[a] = sigma[a * d + b];
        future.apply(line.data());
        for (int a = 0; a < d; ++a) sigma[a * d + b] = line[a];
      }
      for (int a = 0; a < d; ++a) {
        line.assign(sigma.begin() + a * d, sigma.begin() + (a + 1) * d);
        future.apply(line.data());
        std::copy(line.begin(), line.end(), sigma.begin() + a * d);
      }
    }
    future.apply(mu.data());
    stats_values_ += d + d * d;
  }

  void score(const ScoreView& view, std::span<double> scores) override {
    const LayerData& raw = *view.raw;
    const int d = raw.head_dim;
    const size_t n = view.candidates.size();
    std::vector<double> mu, sigma, logits(n), mean(n, 0.0);
    for (int j = 0; j < view.group; ++j) {
      statistics(raw, view.local_layer, view.kv_head * view.group + j, view.step, mu, sigma);
      double top = -INFINITY;
      for (size_t i = 0; i < n; ++i) {
        const float* k = raw.key(view.kv_head, view.candidates[i]);
        double linear = 0, quadratic = 0;
        for (int a = 0; a < d; ++a) {
          linear += mu[a] * k[a];
          if (!covariance_) continue;
          double row = 0;
          for (int b = 0; b < d; ++b) row += sigma[a * d + b] * k[b];
          quadratic += k[a] * row;
        }
        logits[i] = scale_ * linear + scale_ * scale_ * quadratic / 2;
        top = std::max(top, logits[i]);
      }
      double z = 0;
      for (double& x : logits) z += (x = std::exp(x - top));
      for (size_t i = 0; i < n; ++i) mean[i] += logits[i] / z / view.group;
    }
    for (size_t i = 0; i < n; ++i) {
      const double norm =
          vnorm_ ? std::sqrt(evict::squared_norm(raw.value(view.kv_head, view.candidates[i]), d))
                 : 1.0;
      scores[i] = (mean[i] + epsilon_) * norm;
    }
  }

  int64_t sinks_, stats_window_;
  bool covariance_, vnorm_;
  double epsilon_, scale_;
  std::vector<Rope> ropes_;           // per local layer
  std::vector<MeanRotation> future_;  // Rbar per local layer
  double stats_values_ = 0;
};

PolicyInfo expected_attention_info() {
  PolicyInfo info = policy_info<ExpectedAttention>(
      "expected_attention", StageKind::kEvict,
      "ExpectedAttention (kvpress): after prefill keep the tokens the future queries are "
      "expected to attend to (Gaussian query statistics, RoPE averaged), times |v|",
      evict::budget_params(0.2));
  info.params.push_back(
      ParamSpec::Int("n_future", 512, 1, 1 << 20, "future positions RoPE is averaged over"));
  info.params.push_back(ParamSpec::Int("n_sink", 4, 0, 1 << 20,
                                       "leading positions always kept (inside the budget), and "
                                       "left out of the query statistics"));
  info.params.push_back(
      ParamSpec::Bool("use_covariance", true, "add the covariance term s^2 k^T Sigma' k / 2"));
  info.params.push_back(ParamSpec::Bool("use_vnorm", true, "multiply the score by |v|"));
  info.params.push_back(
      ParamSpec::Float("epsilon", 0, 0, 1, "added to the expected attention before |v|"));
  info.params.push_back(ParamSpec::Int(
      "stats_window", 0, 0, 1 << 20,
      "query statistics from the last n post-sink prompt queries; 0 = all (kvpress)"));
  info.check = [](const Params& p) { evict::check_budget("expected_attention", p); };
  info.check_trace = [](const Params&, const TraceMeta& meta) {
    if (!(meta.rope_theta > 0) || meta.head_dim % 2 != 0) {
      throw ConfigError(
          "policy 'expected_attention' needs RoPE: the trace's rope_theta must be > 0 and "
          "head_dim even (rope_theta " +
          std::to_string(meta.rope_theta) + ", head_dim " + std::to_string(meta.head_dim) + ")");
    }
    // The statistics undo RoPE: refuse a rotation that cannot be undone exactly, up front.
    for (int slot = 0; slot < meta.num_layers(); ++slot) (void)Rope::for_slot(meta, slot);
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(expected_attention_info());
}  // namespace kvsim
