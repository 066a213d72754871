// `pyramidkv` — layer budgets that shrink with depth (Cai et al., 2024, arXiv
// 2406.02069, "PyramidKV"), as the official code (Zefan-Cai/KVCache-Factory,
// pyramidkv/pyramidkv_utils.py, PyramidKVCluster.update_kv).
//
// Once, at the end of prefill, per (layer, kv head): the SnapKV window score
// (the last `window` prompt queries' attention, summed over the window rows and
// the group, pooled; the same code as snapkv), keeping the top k_l tokens plus
// the window, where the layer budget k_l follows the schedule:
//   M the mean per-layer budget (window included), Bbar = M - w, L the model's
//   layer count, l the model's layer index;
//   m_min = floor(Bbar / beta), m_max = 2*Bbar - m_min;
//   if m_max >= P - w: m_max = P - w, m_min = 2*Bbar - m_max;
//   step = floor((m_max - m_min) / (L - 1)); k_l = m_max - l*step.
//   P < M: no compression; P < 2*Bbar: every layer keeps Bbar (plain SnapKV).
// Decode tokens are appended and never evicted.
//
// Interpretations (methods.md marks these open):
//   - l and L are the model's layer index and count (the trace's layer_ids and
//     num_model_layers), never the slot: a trace of some layers holds part of
//     the budget. The counter pyramidkv.budget_tokens sums the (layer, kv head)
//     budgets a replay used (k_l + w), to compare with L * M per head.
//   - the short-prompt fallback, integer steps and the window on top of k_l:
//     the official code's (kvpress' PyramidKVPress, with real-valued steps and
//     the window inside, is not offered).
//   - defaults: the official LongBench runner's window 8, kernel 7, max pool
//     (run_longbench.py); beta 20.
// Memory: what the store counts (fp16: 2*16*d bits per kept token):
// min(P_w, k_l + w) + (t + 1 - P) tokens per (layer, kv head) at step t.
#include <algorithm>
#include <cmath>

#include "policies/scorer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

class PyramidKv final : public ScorerStage {
 public:
  PyramidKv(const Params& p, const ShardContext& ctx)
      : ScorerStage(options(p, ctx), ctx),
        kernel_(static_cast<int>(p.get_int("kernel"))),
        pooling_(p.get_string("pooling") == "avg" ? evict::Pooling::kAvg : evict::Pooling::kMax) {
    const int64_t mean =
        evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), ctx.prompt_len);
    for (size_t l = 0; l < ctx.slots.size(); ++l) {
      const int64_t tokens =
          layer_budget(mean, p.get_int("window"), p.get_float("beta"), ctx.prompt_len,
                       ctx.original_layer(static_cast<int>(l)), ctx.meta->num_model_layers);
      for (int h = 0; h < ctx.meta->num_kv_heads; ++h) {
        set_budget(static_cast<int>(l), h, tokens);
        if (tokens != kKeepAll) budget_tokens_ += static_cast<double>(tokens);
      }
    }
  }

  void report(std::map<std::string, double>& counters) const override {
    ScorerStage::report(counters);
    counters["pyramidkv.budget_tokens"] += budget_tokens_;
  }

 private:
  static Options options(const Params& p, const ShardContext& ctx) {
    Options o;
    o.name = "pyramidkv";
    o.budget = evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), ctx.prompt_len);
    o.recent = p.get_int("window");
    o.observe = Observe::kSum;
    o.prefill_rows = p.get_int("window");
    return o;
  }

 public:
  // The tokens layer `layer` of `layers` keeps (window included), or kKeepAll.
  static int64_t layer_budget(int64_t mean, int64_t window, double beta, int64_t prompt, int layer,
                              int layers) {
    if (prompt < mean) return kKeepAll;
    const int64_t bbar = mean - window;
    if (prompt < 2 * bbar) return mean;
    int64_t m_min = static_cast<int64_t>(std::floor(static_cast<double>(bbar) / beta));
    int64_t m_max = 2 * bbar - m_min;
    if (m_max >= prompt - window) {
      m_max = prompt - window;
      m_min = 2 * bbar - m_max;
    }
    const int64_t step = layers > 1 ? (m_max - m_min) / (layers - 1) : 0;
    return m_max - layer * step + window;
  }

 private:
  void score(const ScoreView& view, std::span<double> scores) override {
    pooled_attention_scores(view, kernel_, pooling_, scores);
  }

  int kernel_;
  evict::Pooling pooling_;
  double budget_tokens_ = 0;
};

PolicyInfo pyramidkv_info() {
  PolicyInfo info = policy_info<PyramidKv>(
      "pyramidkv", StageKind::kEvict,
      "PyramidKV: SnapKV selection with layer budgets that shrink with depth (arithmetic, "
      "mean M; the top layer keeps about (M - window)/beta plus the window)",
      {
          ParamSpec::Float("ratio", 0.2, 0, 1,
                           "mean per-layer budget M (window included) as a fraction of the "
                           "prompt: ceil(ratio*P)"),
          ParamSpec::Int("budget", 0, 0, int64_t{1} << 30, "M in tokens; overrides ratio when > 0"),
          ParamSpec::Float("beta", 20, 1, 1e6, "the top layer keeps about (M - window)/beta"),
      });
  for (ParamSpec& spec : window_score_params(8, 7)) info.params.push_back(std::move(spec));
  info.check = [](const Params& p) {
    evict::check_budget("pyramidkv", p);
    check_odd_kernel("pyramidkv", p);
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(pyramidkv_info());
}  // namespace kvsim
