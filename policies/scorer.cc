#include "policies/scorer.h"

#include <algorithm>

#include "sim/base/errors.h"

namespace kvsim {

ScorerStage::ScorerStage(Options options, const ShardContext& ctx)
    : options_(std::move(options)),
      num_kv_heads_(ctx.meta->num_kv_heads),
      group_(ctx.group_size()),
      num_tokens_(ctx.num_tokens),
      budgets_(ctx.slots.size() * num_kv_heads_, options_.budget) {
  if (options_.observe != Observe::kNone) {
    attention_.assign(budgets_.size(), std::vector<double>(static_cast<size_t>(num_tokens_), 0.0));
  }
}

void ScorerStage::set_budget(int local_layer, int kv_head, int64_t tokens) {
  KVSIM_CHECK(tokens == kKeepAll || tokens >= 0);
  budgets_[head_index(local_layer, kv_head)] = tokens;
}

int64_t ScorerStage::budget(int local_layer, int kv_head) const {
  return budgets_[head_index(local_layer, kv_head)];
}

bool ScorerStage::prepare(const ArrivalView& view, int64_t budget, ScoreView& score_view) {
  eligible_.clear();
  if (budget == kKeepAll) return false;
  const auto n = static_cast<int64_t>(view.candidates.size());
  if (options_.protected_in_budget && n <= budget) return false;

  // Split the candidates into protected entries and the eligible ones.
  const int64_t recent =
      options_.protected_in_budget ? std::min(options_.recent, budget) : options_.recent;
  const int64_t oldest_recent = view.step - recent + 1;
  int64_t protected_count = 0;
  for (int32_t pos : view.candidates) {
    const bool arriving = !view.prefill && pos == view.step;
    if (pos < options_.sinks || pos >= oldest_recent || arriving) {
      ++protected_count;
    } else {
      eligible_.push_back(pos);
    }
  }
  const int64_t keep =
      options_.protected_in_budget ? std::max<int64_t>(0, budget - protected_count) : budget;
  if (static_cast<int64_t>(eligible_.size()) <= keep) {
    eligible_.clear();
    return false;
  }

  score_view.local_layer = view.local_layer;
  score_view.kv_head = view.kv_head;
  score_view.step = view.step;
  score_view.prefill = view.prefill;
  score_view.candidates = eligible_;
  score_view.cache = view.candidates;
  score_view.keep = static_cast<size_t>(keep);
  score_view.budget = budget;
  score_view.group = group_;
  score_view.raw = view.raw;
  if (!attention_.empty()) {
    score_view.attention = attention_[head_index(view.local_layer, view.kv_head)];
  }
  return true;
}

void ScorerStage::select(const ArrivalView& view, std::vector<int32_t>& evict) {
  if (!view.prefill && options_.schedule == evict::Schedule::kOnce) return;
  ScoreView score_view;
  if (!prepare(view, budget(view.local_layer, view.kv_head), score_view)) return;
  scores_.assign(eligible_.size(), 0.0);
  score(score_view, scores_);
  const size_t before = evict.size();
  evict::evict_all_but_top(eligible_, scores_, score_view.keep, evict);
  evicted_ += static_cast<double>(evict.size() - before);
}

size_t ScorerStage::score_candidates(const ArrivalView& view, int64_t budget,
                                     std::vector<int32_t>& eligible, std::vector<double>& scores) {
  ScoreView score_view;
  eligible.clear();
  scores.clear();
  if (!prepare(view, budget, score_view)) return 0;
  scores.assign(eligible_.size(), 0.0);
  score(score_view, scores);
  eligible = eligible_;
  return score_view.keep;
}

void ScorerStage::record(int local_layer, int kv_head, std::span<const int32_t> positions,
                         std::span<const float> attention) {
  if (attention_.empty()) return;
  std::vector<double>& by_position = attention_[head_index(local_layer, kv_head)];
  const size_t n = positions.size();
  if (options_.observe == Observe::kLatest) {
    for (int32_t pos : positions) by_position[pos] = 0.0;
  }
  for (int j = 0; j < group_; ++j) {
    for (size_t i = 0; i < n; ++i) by_position[positions[i]] += attention[j * n + i];
  }
}

void ScorerStage::observe_prefill(int local_layer, int kv_head, std::span<const int32_t> positions,
                                  std::span<const float> attention) {
  record(local_layer, kv_head, positions, attention);
}

void ScorerStage::observe(int local_layer, int kv_head, int64_t /*step*/,
                          std::span<const int32_t> positions, std::span<const float> probs) {
  record(local_layer, kv_head, positions, probs);
}

void ScorerStage::report(std::map<std::string, double>& counters) const {
  counters[options_.name + ".evicted_tokens"] += evicted_;
}

CacheBound ScorerStage::max_cache_tokens() const {
  int64_t most = 0;
  for (int64_t b : budgets_) {
    if (b == kKeepAll) return {};
    most = std::max(most, b);
  }
  // Besides the budget: the sinks, and the recent window or at least the
  // arriving token, which is never evicted at its own step.
  if (!options_.protected_in_budget) {
    const bool arrivals = options_.schedule == evict::Schedule::kCap;
    most += options_.sinks + (arrivals ? std::max<int64_t>(options_.recent, 1) : options_.recent);
  }
  return {most, options_.schedule == evict::Schedule::kOnce};
}

void pooled_attention_scores(const ScoreView& view, int kernel, evict::Pooling pooling,
                             std::span<double> scores) {
  const int32_t lo = view.candidates.front();
  std::vector<double> dense(static_cast<size_t>(view.candidates.back() - lo + 1), 0.0);
  for (int32_t pos : view.candidates) dense[pos - lo] = view.attention[pos];
  const std::vector<double> pooled = evict::pool1d(dense, kernel, pooling);
  for (size_t i = 0; i < view.candidates.size(); ++i) {
    scores[i] = pooled[view.candidates[i] - lo];
  }
}

std::vector<ParamSpec> window_score_params(int64_t window, int64_t kernel) {
  return {
      ParamSpec::Int("window", window, 1, 1 << 20,
                     "observation window: the last prompt queries that score, "
                     "and the prompt tokens always kept"),
      ParamSpec::Int("kernel", kernel, 1, 1023,
                     "pooling size along positions (odd; 1 = no pooling)"),
      ParamSpec::Enum("pooling", "max", {"max", "avg"}, "1-D pooling of the scores"),
  };
}

void check_odd_kernel(const std::string& policy, const Params& p) {
  if (p.get_int("kernel") % 2 == 0) {
    throw ConfigError("policy '" + policy + "': kernel=" + std::to_string(p.get_int("kernel")) +
                      " must be odd (the pooling is centred: kernel/2 tokens on each side)");
  }
}

ScorerStage::Options budget_schedule_options(std::string name, const Params& p,
                                             int64_t prompt_len) {
  ScorerStage::Options o;
  o.name = std::move(name);
  o.schedule = evict::parse_schedule(p.get_string("schedule"));
  o.budget = evict::budget_tokens(p.get_float("ratio"), p.get_int("budget"), prompt_len);
  return o;
}

}  // namespace kvsim
