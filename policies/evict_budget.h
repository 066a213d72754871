// Helpers shared by the score-based eviction policies (h2o, snapkv, random,
// oracle, l2norm): token budgets from a fraction of the prompt, the common
// `ratio`/`budget`/`schedule` parameters, deterministic top-k selection, key
// norms and SnapKV's 1-D pooling. Header-only; everything is in kvsim::evict.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "policies/params.h"
#include "sim/base/errors.h"

namespace kvsim::evict {

// ceil(fraction * n) tokens, robust to floating-point noise: 0.1 * 60 is
// 6.000000000000001 in binary, which is 6 tokens, not 7.
inline int64_t fraction_tokens(double fraction, int64_t n) {
  const double x = fraction * static_cast<double>(n);
  const double nearest = std::round(x);
  if (std::abs(x - nearest) <= 1e-9 * std::max(1.0, std::abs(x))) {
    return static_cast<int64_t>(nearest);
  }
  return static_cast<int64_t>(std::ceil(x));
}

// The cache budget of a `ratio`/`budget` pair: `budget` tokens when > 0,
// else ceil(ratio * prompt_len); never less than 1 (an empty cache cannot attend).
inline int64_t budget_tokens(double ratio, int64_t budget, int64_t prompt_len) {
  const int64_t tokens = budget > 0 ? budget : fraction_tokens(ratio, prompt_len);
  return std::max<int64_t>(1, tokens);
}

// `ratio` and `budget`, as every fixed-budget eviction policy declares them.
inline std::vector<ParamSpec> budget_params(double default_ratio) {
  return {
      ParamSpec::Float("ratio", default_ratio, 0, 1,
                       "cache budget as a fraction of the prompt length P: ceil(ratio*P) tokens"),
      ParamSpec::Int("budget", 0, 0, int64_t{1} << 30,
                     "cache budget in tokens; overrides ratio when > 0"),
  };
}

// Refuses a budget of zero tokens (ratio = 0 and no absolute budget).
inline void check_budget(const std::string& policy, const Params& p,
                         const std::string& ratio_key = "ratio",
                         const std::string& budget_key = "budget") {
  if (p.get_float(ratio_key) <= 0 && p.get_int(budget_key) <= 0) {
    throw ConfigError("policy '" + policy + "': " + ratio_key + "=0 leaves an empty cache; give " +
                      ratio_key + " in (0, 1] or " + budget_key + " > 0");
  }
}

enum class Schedule { kOnce, kCap };

inline ParamSpec schedule_param(const std::string& help) {
  return ParamSpec::Enum("schedule", "once", {"once", "cap"}, help);
}

inline Schedule parse_schedule(const std::string& text) {
  return text == "cap" ? Schedule::kCap : Schedule::kOnce;
}

// Keeps the `keep` highest-scoring entries of `candidates` (scores aligned with
// them) and appends every other position to `evict`. Deterministic ties: on
// equal scores the higher position is kept, i.e. the lower position is evicted
// first. Positions for which `pinned(i)` is true are always kept and do not
// count against `keep`.
template <typename Pinned>
void evict_all_but_top(std::span<const int32_t> candidates, std::span<const double> scores,
                       size_t keep, std::vector<int32_t>& evict, Pinned pinned) {
  KVSIM_CHECK(candidates.size() == scores.size());
  std::vector<size_t> order;
  order.reserve(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (!pinned(i)) order.push_back(i);
  }
  if (order.size() <= keep) return;
  auto better = [&](size_t a, size_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    return candidates[a] > candidates[b];
  };
  std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(),
                   better);
  for (size_t r = keep; r < order.size(); ++r) evict.push_back(candidates[order[r]]);
}

inline void evict_all_but_top(std::span<const int32_t> candidates, std::span<const double> scores,
                              size_t keep, std::vector<int32_t>& evict) {
  evict_all_but_top(candidates, scores, keep, evict, [](size_t) { return false; });
}

// sum x_c^2 over n channels, accumulated in double in channel order (the L2
// norm's square, as l2norm and MiKV's l2norm importance score keys).
inline double squared_norm(const float* x, int n) {
  double s = 0;
  for (int c = 0; c < n; ++c) s += static_cast<double>(x[c]) * x[c];
  return s;
}

enum class Pooling { kMax, kAvg };

// 1-D pooling with stride 1 and `kernel / 2` padding on each side (kernel odd),
// the output as long as the input, as PyTorch's max_pool1d / avg_pool1d do in
// SnapKV: max ignores the padding; avg divides by `kernel` whatever the
// padding (count_include_pad=True, PyTorch's default), so border entries are
// shrunk towards 0.
inline std::vector<double> pool1d(std::span<const double> x, int kernel, Pooling pooling) {
  const int64_t n = static_cast<int64_t>(x.size()), half = kernel / 2;
  std::vector<double> out(x.size(), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t lo = std::max<int64_t>(0, i - half), hi = std::min<int64_t>(n - 1, i + half);
    double acc = pooling == Pooling::kMax ? x[lo] : 0.0;
    for (int64_t j = lo; j <= hi; ++j) {
      acc = pooling == Pooling::kMax ? std::max(acc, x[j]) : acc + x[j];
    }
    out[i] = pooling == Pooling::kMax ? acc : acc / kernel;
  }
  return out;
}

}  // namespace kvsim::evict
