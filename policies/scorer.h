// ScorerStage: the base of score-then-keep-top-k eviction (the idea of NVIDIA
// kvpress' ScorerPress). A policy supplies score() over the candidates of one
// (layer, kv head) and a budget rule (Options); the base does the rest, the
// same way for every such policy:
//   - when to select: at prefill only (schedule once) or at every arrival (cap);
//   - protected entries, never scored nor evicted: the first `sinks`
//     positions, the `recent` newest positions, and at a decode step the
//     arriving token (its own query always sees it, as in a real model);
//   - the budget, per (layer, kv head) (set_budget(): a wrapper such as AdaKV
//     or PyramidKV may give every head its own), counting the protected
//     entries (the cache never exceeds it) or not (H2O: heavy hitters on top
//     of the recent window);
//   - top-k with the project's tie rule: on equal scores the lower position
//     is evicted first (evict::evict_all_but_top);
//   - the attention the policy observes, summed over the kv head's group and
//     kept per position (prefill rows and/or the policy's own cache at every
//     decode step), handed to score();
//   - the counter `<name>.evicted_tokens` and the declared cache bound.
// docs/policies.md ("Writing an eviction scorer") has a short example.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "policies/evict_budget.h"
#include "policies/policy.h"

namespace kvsim {

// What score() sees for one (layer, kv head) at one selection.
struct ScoreView {
  int local_layer = 0;
  int kv_head = 0;
  int64_t step = 0;  // position of the newest token (P - 1 at prefill)
  bool prefill = false;
  // The entries that may be evicted now, ascending: the candidates less the
  // protected ones. score() writes one score per entry; higher = keep.
  std::span<const int32_t> candidates;
  // Every entry of the cache after this arrival, the protected ones included,
  // ascending (e.g. KeyDiff's anchor is the mean over all of them).
  std::span<const int32_t> cache;
  size_t keep = 0;                 // how many of `candidates` stay (the others are evicted)
  int64_t budget = 0;              // this (layer, kv head)'s budget
  int group = 1;                   // query heads per kv head: raw->query(kv_head * group + j, t)
  const LayerData* raw = nullptr;  // keys, values and queries (positions <= step)
  // Attention observed so far, indexed by position (empty unless
  // Options::observe != kNone): the sum over the group's query heads.
  std::span<const double> attention;
};

class ScorerStage : public EvictStage {
 public:
  // A budget that keeps every entry of a (layer, kv head) (e.g. a skipped layer).
  static constexpr int64_t kKeepAll = -1;

  enum class Observe {
    kNone,
    kSum,     // accumulate every observation (H2O's accumulated attention)
    kLatest,  // each observation replaces the previous one (e.g. TOVA)
  };

  struct Options {
    std::string name;    // the policy's name: counters are `<name>.evicted_tokens`
    int64_t budget = 1;  // tokens per (layer, kv head), or kKeepAll
    evict::Schedule schedule = evict::Schedule::kOnce;  // once: at prefill only; cap: always
    int64_t sinks = 0;                                  // leading positions never evicted
    int64_t recent = 0;  // newest positions never evicted (the newest included)
    // true: the protected entries count against the budget (the cache holds
    // at most `budget`; the recent window shrinks to the budget when larger);
    // false: `budget` scored entries are kept besides the protected ones.
    bool protected_in_budget = true;
    Observe observe = Observe::kNone;
    int64_t prefill_rows = 0;       // prompt rows observed (-1 = all), when observing
    bool decode_attention = false;  // observe the own cache at every decode step
  };

  ScorerStage(Options options, const ShardContext& ctx);

  void set_budget(int local_layer, int kv_head, int64_t tokens);
  int64_t budget(int local_layer, int kv_head) const;

  void select(const ArrivalView& view, std::vector<int32_t>& evict) final;
  // What select() would score under `budget`, without evicting: the eligible
  // entries of `view` (its candidates less the protected ones) into `eligible`,
  // their scores into `scores`; returns how many of them would stay. Nothing
  // is scored (both empty) when the budget keeps everything. For a wrapper that
  // decides budgets across heads (AdaKV).
  size_t score_candidates(const ArrivalView& view, int64_t budget, std::vector<int32_t>& eligible,
                          std::vector<double>& scores);
  const Options& options() const { return options_; }
  int64_t prefill_attention_rows() const override { return options_.prefill_rows; }
  bool needs_decode_attention() const override { return options_.decode_attention; }
  void observe_prefill(int local_layer, int kv_head, std::span<const int32_t> positions,
                       std::span<const float> attention) override;
  void observe(int local_layer, int kv_head, int64_t step, std::span<const int32_t> positions,
               std::span<const float> probs) override;
  void report(std::map<std::string, double>& counters) const override;
  CacheBound max_cache_tokens() const override;

 protected:
  // One score per view.candidates entry into `scores`; higher = keep.
  virtual void score(const ScoreView& view, std::span<double> scores) = 0;

 private:
  size_t head_index(int local_layer, int kv_head) const {
    return static_cast<size_t>(local_layer) * num_kv_heads_ + kv_head;
  }
  // Splits view.candidates into eligible_ and the protected ones; fills `score_view`
  // and returns false when nothing needs evicting under `budget`.
  bool prepare(const ArrivalView& view, int64_t budget, ScoreView& score_view);
  void record(int local_layer, int kv_head, std::span<const int32_t> positions,
              std::span<const float> attention);

  Options options_;
  int num_kv_heads_, group_;
  int64_t num_tokens_;
  std::vector<int64_t> budgets_;                // [layer * kv head]
  std::vector<std::vector<double>> attention_;  // [layer * kv head][position], when observing
  std::vector<int32_t> eligible_;               // scratch
  std::vector<double> scores_;                  // scratch
  double evicted_ = 0;
};

// SnapKV's observation-window score (snapkv, pyramidkv): the observed
// attention of the candidates pooled along positions (an entry absent from the
// candidates counts 0 for its neighbours).
void pooled_attention_scores(const ScoreView& view, int kernel, evict::Pooling pooling,
                             std::span<double> scores);
// SnapKV's `window`, `kernel` and `pooling` parameters, with their defaults.
std::vector<ParamSpec> window_score_params(int64_t window, int64_t kernel);
// Refuses an even pooling kernel.
void check_odd_kernel(const std::string& policy, const Params& p);

// A scorer whose parameters are `ratio` (default 0.2), `budget` and
// `schedule` (random, oracle): its registration, and its options (the budget
// and schedule, nothing protected).
template <typename StageT>
PolicyInfo budget_schedule_policy(const std::string& name, std::string summary,
                                  std::string schedule_help) {
  PolicyInfo info =
      policy_info<StageT>(name, StageKind::kEvict, std::move(summary), evict::budget_params(0.2));
  info.params.push_back(evict::schedule_param(std::move(schedule_help)));
  info.check = [name](const Params& p) { evict::check_budget(name, p); };
  return info;
}
ScorerStage::Options budget_schedule_options(std::string name, const Params& p, int64_t prompt_len);

}  // namespace kvsim
