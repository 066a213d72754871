// `adakv` — head-adaptive budgets within a layer (Feng et al., 2024, arXiv
// 2407.11550, "Ada-KV"), as the official Ada-SnapKV
// (FFY0/AdaKV, adaptive_snapkv/monkeypatch/snapkv_utils.py,
// AdaptiveSnapKVCluster). A wrapper over any scorer (`inner`, default snapkv):
// it changes only HOW MANY tokens each kv head keeps; the layer's total stays
// Hkv * B' (B' = B less the inner's protected entries, e.g. SnapKV's window).
//
// Once, at the end of prefill, per layer (EvictStage::prefill_layer):
//   1. every kv head's eligible entries are scored by the inner scorer, under
//      the uniform budget B (ScorerStage::score_candidates);
//   2. safeguard=official: m_h = how many of head h's entries are among the top
//      Hkv*B' of the layer's concatenated scores; head h keeps its own top
//      B_h = round((1-alpha)*m_h + floor(alpha*B')), at most its eligible count.
//      safeguard=kvpress (AdaKVPress): each head first reserves its top
//      floor(alpha*B'), then the top Hkv*B' - Hkv*floor(alpha*B') of the
//      remaining entries of every head stay; B_h is the reserve plus its share;
//   3. each head keeps its top B_h plus the inner's protected entries.
// Layers whose original id is below `skip` get the uniform B' (the paper's
// lower layers). Decoded tokens join every head (nothing is evicted after
// prefill, whatever the inner's schedule).
//
// Interpretations (methods.md marks these open):
//   - safeguard: `official` by default; `kvpress` for AdaKVPress' allocation.
//   - GQA: kvsim keeps one cache per kv head, so the official GQA path (scores
//     reduced over the group) is followed; the inner's reduction applies
//     (SnapKV sums the group, which ranks as the group mean).
//   - rounding moves sum B_h off Hkv*B' by a few tokens: the counter
//     adakv.budget_drift sums (sum_h B_h - Hkv*B') over layers and sequences.
//   - cross-head ties: equal scores rank the higher position first, then the
//     lower kv head (the project's tie rule, extended).
//   - inner parameters: `inner=snapkv;window=8;kernel=5` (';' separates the
//     inner's key=value pairs); the inner's own budget is replaced by AdaKV's.
// Memory: sum_h (B_h + w + decoded) * 2*16*d bits with the fp16 store, plus 32
// bits per head for its length, reported apart (counter adakv.length_bits).
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "policies/scorer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

// `snapkv;window=8` -> ("snapkv", "window=8").
std::pair<std::string, std::string> split_inner(const std::string& text) {
  const auto semi = text.find(';');
  std::string args = semi == std::string::npos ? "" : text.substr(semi + 1);
  std::replace(args.begin(), args.end(), ';', ',');
  return {text.substr(0, semi), args};
}

// The inner scorer's stage for `ctx`; ConfigError when it is not a scorer.
std::unique_ptr<ScorerStage> make_inner(const std::string& text, const ShardContext& ctx) {
  const auto [name, args] = split_inner(text);
  const PolicyInfo* info = PolicyRegistry::instance().find(name);
  if (!info || info->kind != StageKind::kEvict || name == "adakv") {
    throw ConfigError("policy 'adakv': inner=" + name +
                      " is not an eviction scorer (e.g. snapkv, h2o, tova, keydiff, l2norm)");
  }
  std::unique_ptr<Stage> stage = info->create(Params::parse(name, info->params, args), ctx);
  auto* scorer = dynamic_cast<ScorerStage*>(stage.get());
  if (!scorer) {
    throw ConfigError("policy 'adakv': inner=" + name +
                      " does not score tokens (it is not a ScorerStage), so its budget cannot be "
                      "shared across heads");
  }
  stage.release();
  return std::unique_ptr<ScorerStage>(scorer);
}

class AdaKv final : public EvictStage {
 public:
  AdaKv(const Params& p, const ShardContext& ctx)
      : inner_(make_inner(p.get_string("inner"), ctx)),
        ctx_(ctx),
        budget_(evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), ctx.prompt_len)),
        alpha_(p.get_float("alpha")),
        kvpress_(p.get_string("safeguard") == "kvpress"),
        skip_(p.get_int("skip")),
        heads_(ctx.meta->num_kv_heads),
        eligible_(heads_),
        scores_(heads_),
        keep_(heads_, 0) {
    for (size_t l = 0; l < ctx.slots.size(); ++l) {
      for (int h = 0; h < heads_; ++h) inner_->set_budget(static_cast<int>(l), h, budget_);
    }
  }

  int64_t prefill_attention_rows() const override { return inner_->prefill_attention_rows(); }
  void observe_prefill(int local_layer, int kv_head, std::span<const int32_t> positions,
                       std::span<const float> attention) override {
    inner_->observe_prefill(local_layer, kv_head, positions, attention);
  }
  // At most the whole layer's budget in one head (a loose but safe bound).
  CacheBound max_cache_tokens() const override { return {budget_ * heads_, true}; }

  void prefill_layer(int local_layer, std::span<const ArrivalView> heads) override {
    size_t per_head = 0;  // B'
    int scored = 0;
    for (int h = 0; h < heads_; ++h) {
      const size_t keep = inner_->score_candidates(heads[h], budget_, eligible_[h], scores_[h]);
      if (eligible_[h].empty()) continue;
      per_head = keep;
      ++scored;
      keep_[h] = keep;
    }
    if (scored == 0) return;
    if (ctx_.original_layer(local_layer) >= skip_) allocate(per_head);
    int64_t total = 0;
    for (int h = 0; h < heads_; ++h) {
      if (!eligible_[h].empty()) total += static_cast<int64_t>(keep_[h]);
    }
    budget_drift_ += static_cast<double>(total - static_cast<int64_t>(per_head) * scored);
  }

  void select(const ArrivalView& view, std::vector<int32_t>& evict) override {
    if (!view.prefill) return;
    length_bits_ += 32;
    const int h = view.kv_head;
    if (eligible_[h].empty()) return;
    const size_t before = evict.size();
    evict::evict_all_but_top(eligible_[h], scores_[h], keep_[h], evict);
    evicted_ += static_cast<double>(evict.size() - before);
    eligible_[h].clear();
  }

  void report(std::map<std::string, double>& counters) const override {
    counters["adakv.evicted_tokens"] += evicted_;
    counters["adakv.budget_drift"] += budget_drift_;
    counters["adakv.length_bits"] += length_bits_;
  }

 private:
  struct Entry {
    double score;
    int32_t pos;
    int head;
    size_t rank;  // within its head, best first
  };
  static bool better(const Entry& a, const Entry& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.pos != b.pos) return a.pos > b.pos;
    return a.head < b.head;
  }

  // keep_[h] for every scored head from the layer's concatenated scores.
  void allocate(size_t per_head) {
    const auto floor_alpha =
        static_cast<size_t>(std::floor(alpha_ * static_cast<double>(per_head)));
    std::vector<Entry> pool;
    std::vector<size_t> reserved(heads_, 0);
    size_t scored = 0;
    for (int h = 0; h < heads_; ++h) {
      if (eligible_[h].empty()) continue;
      ++scored;
      std::vector<Entry> own;
      for (size_t i = 0; i < eligible_[h].size(); ++i) {
        own.push_back({scores_[h][i], eligible_[h][i], h, 0});
      }
      std::sort(own.begin(), own.end(), better);
      if (kvpress_) reserved[h] = std::min(floor_alpha, own.size());
      for (size_t r = reserved[h]; r < own.size(); ++r) pool.push_back(own[r]);
    }
    size_t take = per_head * scored;
    for (size_t r : reserved) take -= r;
    take = std::min(take, pool.size());
    std::nth_element(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(take), pool.end(),
                     better);
    std::vector<size_t> share(heads_, 0);
    for (size_t i = 0; i < take; ++i) ++share[pool[i].head];
    for (int h = 0; h < heads_; ++h) {
      if (eligible_[h].empty()) continue;
      const double official = std::round((1 - alpha_) * static_cast<double>(share[h]) +
                                         static_cast<double>(floor_alpha));
      const size_t b = kvpress_ ? reserved[h] + share[h] : static_cast<size_t>(official);
      keep_[h] = std::min(b, eligible_[h].size());
    }
  }

  std::unique_ptr<ScorerStage> inner_;
  ShardContext ctx_;
  int64_t budget_;
  double alpha_;
  bool kvpress_;
  int64_t skip_;
  int heads_;
  std::vector<std::vector<int32_t>> eligible_;  // [kv head], this layer's prefill
  std::vector<std::vector<double>> scores_;     // [kv head], aligned with eligible_
  std::vector<size_t> keep_;                    // [kv head]: B_h
  double evicted_ = 0, budget_drift_ = 0, length_bits_ = 0;
};

// A minimal one-layer context, to build the inner stage when the spec is checked.
void check_inner(const std::string& text) {
  const auto [name, args] = split_inner(text);
  const PolicyInfo* info = PolicyRegistry::instance().find(name);
  if (info && info->kind == StageKind::kEvict && name != "adakv") {
    const Params params = Params::parse(name, info->params, args);
    if (info->check) info->check(params);
  }
  TraceMeta meta;
  meta.num_model_layers = 1;
  meta.layer_ids = {0};
  meta.sliding_window = {0};
  meta.num_q_heads = meta.num_kv_heads = 1;
  meta.head_dim = 2;
  meta.attn_scale = 1;
  meta.rope_theta = 1e4;  // a scorer may rotate (expected_attention)
  LayerData layer;
  layer.num_tokens = 2;
  layer.head_dim = 2;
  layer.q = layer.k = layer.v = std::vector<float>(4, 0.f);
  ShardContext ctx;
  ctx.meta = &meta;
  ctx.slots = {0};
  ctx.layers = {&layer};
  ctx.prompt_len = 1;
  ctx.num_tokens = 2;
  make_inner(text, ctx);
}

PolicyInfo adakv_info() {
  PolicyInfo info = policy_info<AdaKv>(
      "adakv", StageKind::kEvict,
      "AdaKV: share a layer's budget across its kv heads by the inner scorer's scores "
      "(head-adaptive budgets), once after prefill",
      evict::budget_params(0.2));
  info.params.push_back(ParamSpec::String(
      "inner", "snapkv",
      "the scorer whose scores allocate and select, with its parameters after ';' "
      "(snapkv;window=8;kernel=5)"));
  info.params.push_back(ParamSpec::Float(
      "alpha", 0.2, 0, 1, "safeguard: each head keeps at least about floor(alpha*B') tokens"));
  info.params.push_back(ParamSpec::Enum(
      "safeguard", "official", {"official", "kvpress"},
      "official: B_h = round((1-alpha)*m_h + floor(alpha*B')); kvpress: reserve floor(alpha*B') "
      "per head, then share the rest"));
  info.params.push_back(
      ParamSpec::Int("skip", 0, 0, 1 << 20, "original layer ids below this get uniform budgets"));
  info.check = [](const Params& p) {
    evict::check_budget("adakv", p);
    check_inner(p.get_string("inner"));
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(adakv_info());
}  // namespace kvsim
