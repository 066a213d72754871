// ScorerStage (policies/scorer.h): protected entries, budgets per (layer, kv
// head), the tie rule, observed attention and the declared cache bound, on a
// scorer whose scores are a fixed table; then the bounds every evicting
// policy declares, checked against what a replay keeps and read by the sweep
// planner.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <map>
#include <numeric>
#include <string>

#include "policies/scorer.h"
#include "sim/sweep.h"
#include "test_util.h"

namespace kvsim {
namespace {

using testing::Positions;
using testing::range;
using testing::select;

// Scores position p with table[p]; remembers what it was asked.
class TableScorer final : public ScorerStage {
 public:
  TableScorer(Options options, const ShardContext& ctx, std::vector<double> table)
      : ScorerStage(std::move(options), ctx), table_(std::move(table)) {}

  Positions asked;  // the candidates of the last score() call
  size_t keep = 0;
  std::vector<double> attention;  // view.attention at the last call
  int calls = 0;

 private:
  void score(const ScoreView& view, std::span<double> scores) override {
    asked.assign(view.candidates.begin(), view.candidates.end());
    keep = view.keep;
    attention.assign(view.attention.begin(), view.attention.end());
    ++calls;
    for (size_t i = 0; i < scores.size(); ++i) scores[i] = table_[view.candidates[i]];
  }
  std::vector<double> table_;
};

ScorerStage::Options options(int64_t budget, evict::Schedule schedule) {
  ScorerStage::Options o;
  o.name = "table";
  o.budget = budget;
  o.schedule = schedule;
  return o;
}

// 10 prompt tokens, budget 5 with 1 sink and 2 recent: the 2 best of the 7
// middle tokens stay. Scores tie between 3 and 6: the lower position goes.
TEST(Scorer, ProtectedEntriesCountInTheBudgetAndTiesEvictTheLowerPosition) {
  testing::HandShard s(1, 1, 2, 12, 10);
  ScorerStage::Options o = options(5, evict::Schedule::kOnce);
  o.sinks = 1;
  o.recent = 2;
  //                       0  1  2  3  4  5  6  7  8  9
  TableScorer stage(o, s.ctx, {0, 1, 0, 5, 0, 0, 5, 9, 0, 0, 0, 0});
  EXPECT_EQ(select(stage, s.layer, 9, true, range(0, 10)), (Positions{1, 2, 3, 4, 5}));
  EXPECT_EQ(stage.asked, range(1, 8));  // neither the sink nor the recent window is scored
  EXPECT_EQ(stage.keep, 2u);
  // Once: decode steps are left alone.
  EXPECT_EQ(select(stage, s.layer, 10, false, {0, 6, 7, 8, 9, 10}), Positions{});
  EXPECT_EQ(stage.calls, 1);
  std::map<std::string, double> counters;
  stage.report(counters);
  EXPECT_EQ(counters.at("table.evicted_tokens"), 5);
}

// Cap schedule at a decode step: the arriving token is never evicted and
// takes one place of the budget; a cache within the budget is not scored.
TEST(Scorer, CapKeepsTheArrivingTokenAndSkipsCachesWithinBudget) {
  testing::HandShard s(1, 1, 2, 12, 8);
  TableScorer stage(options(3, evict::Schedule::kCap), s.ctx, {9, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(select(stage, s.layer, 7, true, range(0, 3)), Positions{});
  EXPECT_EQ(stage.calls, 0);
  EXPECT_EQ(select(stage, s.layer, 8, false, {0, 1, 2, 8}), Positions{1});
  EXPECT_EQ(stage.asked, (Positions{0, 1, 2}));
  EXPECT_EQ(stage.keep, 2u);
}

// A recent window larger than the budget shrinks to the budget (SnapKV's
// clamp), so the cache never exceeds it.
TEST(Scorer, RecentWindowShrinksToTheBudget) {
  testing::HandShard s(1, 1, 2, 12, 10);
  ScorerStage::Options o = options(3, evict::Schedule::kOnce);
  o.recent = 6;
  TableScorer stage(o, s.ctx, std::vector<double>(12, 1.0));
  EXPECT_EQ(select(stage, s.layer, 9, true, range(0, 10)), range(0, 7));
}

// H2O's rule: `budget` scored entries besides the protected ones.
TEST(Scorer, BudgetBesidesProtectedEntries) {
  testing::HandShard s(1, 1, 2, 12, 10);
  ScorerStage::Options o = options(2, evict::Schedule::kCap);
  o.recent = 3;
  o.protected_in_budget = false;
  TableScorer stage(o, s.ctx, {1, 7, 2, 6, 3, 0, 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(select(stage, s.layer, 9, true, range(0, 10)), (Positions{0, 2, 4, 5, 6}));
  const CacheBound bound = stage.max_cache_tokens();
  EXPECT_EQ(bound.tokens, 2 + 3);
  EXPECT_FALSE(bound.plus_decode);
}

// Budgets per (layer, kv head): a wrapper gives head 1 its own; kKeepAll
// leaves a head whole and makes the stage's cache unbounded.
TEST(Scorer, BudgetsPerHead) {
  testing::HandShard s(2, 2, 2, 12, 10);
  std::vector<double> later_is_better(12);
  std::iota(later_is_better.begin(), later_is_better.end(), 0.0);
  TableScorer stage(options(4, evict::Schedule::kOnce), s.ctx, later_is_better);
  stage.set_budget(0, 1, 2);
  EXPECT_EQ(select(stage, s.layer, 9, true, range(0, 10), 0), range(0, 6));
  EXPECT_EQ(select(stage, s.layer, 9, true, range(0, 10), 1), range(0, 8));
  EXPECT_EQ(stage.max_cache_tokens().tokens, 4);
  EXPECT_TRUE(stage.max_cache_tokens().plus_decode);
  EXPECT_EQ(stage.max_cache_tokens().at(11, 10), 4 + 2);
  stage.set_budget(0, 1, ScorerStage::kKeepAll);
  EXPECT_EQ(select(stage, s.layer, 9, true, range(0, 10), 1), Positions{});
  EXPECT_FALSE(stage.max_cache_tokens().bounded());
}

// Observed attention reaches score() by position, summed over the group's
// query heads: accumulated (kSum) or replaced by each observation (kLatest).
TEST(Scorer, ObservedAttentionIsSummedOverTheGroup) {
  testing::HandShard s(2, 1, 2, 6, 4);  // two query heads share the kv head
  for (auto mode : {ScorerStage::Observe::kSum, ScorerStage::Observe::kLatest}) {
    ScorerStage::Options o = options(1, evict::Schedule::kCap);
    o.observe = mode;
    o.prefill_rows = -1;
    o.decode_attention = true;
    TableScorer stage(o, s.ctx, std::vector<double>(6, 0.0));
    EXPECT_EQ(stage.prefill_attention_rows(), -1);
    EXPECT_TRUE(stage.needs_decode_attention());
    // [group = 2, 3 positions]
    stage.observe_prefill(0, 0, Positions{0, 1, 2}, std::vector<float>{1, 2, 3, 10, 20, 30});
    stage.observe(0, 0, 4, Positions{1, 2}, std::vector<float>{0.5, 0.25, 0.5, 0.25});
    select(stage, s.layer, 4, false, {0, 1, 2, 4});
    const std::vector<double> want = mode == ScorerStage::Observe::kSum
                                         ? std::vector<double>{11, 23, 33.5, 0, 0, 0}
                                         : std::vector<double>{11, 1, 0.5, 0, 0, 0};
    EXPECT_EQ(stage.attention, want);
  }
}

// The bound every evicting policy declares holds at every step of a replay,
// and is reached (it is the cap, not a loose guess); the planner reads the
// same bounds from probe_traits. l2norm's default skips layers 0 and 1, whose
// caches are whole: no bound.
TEST(CacheBounds, DeclaredBoundsHoldAndAreReached) {
  testing::TempDir dir;
  const SynthConfig c = testing::small_synth();  // P = 256, T = 320
  const std::vector<std::string> specs = {
      "streamingllm:sinks=4,window=28",
      "h2o",
      "snapkv:budget=20",
      "random:schedule=cap",
      "oracle",
      "l2norm:keep_ratio=0.1,skip=[]",
      "l2norm:schedule=cap,cap=30,skip=[]",
      "streamingllm:sinks=4,window=100+h2o:heavy_tokens=10,recent_tokens=5"};
  const auto runs = testing::replay_synth(c, specs, dir, testing::every_step());
  const TraceReader reader(dir.file("trace_" + std::to_string(c.seed) + ".h5"));
  for (size_t i = 0; i < specs.size(); ++i) {
    const PolicyTraits traits =
        probe_traits(PolicySpec::parse(specs[i]), reader.meta(), reader.sequence(0));
    ASSERT_FALSE(traits.cache_bounds.empty()) << specs[i];
    bool reached = false;
    for (const auto& k : runs[i].kv) {
      int64_t bound = std::numeric_limits<int64_t>::max();
      for (const CacheBound& b : traits.cache_bounds) bound = std::min(bound, b.at(k.step, 256));
      EXPECT_LE(k.kept_tokens, bound) << specs[i] << " step " << k.step;
      reached |= k.kept_tokens == bound;
    }
    EXPECT_TRUE(reached) << specs[i];
  }
  for (const std::string spec : {"l2norm", "full", "kivi", "mikv", "minicache"}) {
    EXPECT_TRUE(probe_traits(PolicySpec::parse(spec), reader.meta(), reader.sequence(0))
                    .cache_bounds.empty())
        << spec;
  }
}

}  // namespace
}  // namespace kvsim
