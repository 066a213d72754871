// The sweep's unit-to-rank assignment (sim/sharding.h): a pure function, tested
// without MPI.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "sim/base/errors.h"
#include "sim/sharding.h"

namespace kvsim {
namespace {

struct Problem {
  std::vector<ShardUnit> units;
  std::vector<double> overhead;
};

// `blocks` blocks of `units` units of cost `cost` each, each block read at `overhead`.
Problem equal_blocks(int blocks, int units, double cost, double overhead) {
  Problem p;
  for (int b = 0; b < blocks; ++b) {
    for (int c = 0; c < units; ++c) p.units.push_back({b, cost});
    p.overhead.push_back(overhead);
  }
  return p;
}

// `blocks` blocks of `configs` units each; unit costs vary by config (some
// policies cost more) and block sizes vary (sequence lengths differ).
Problem sweep_like(int blocks, int configs, uint32_t seed, double overhead_share = 0.05) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> length(0.5, 2.0), config_cost(1.0, 6.0);
  std::vector<double> per_config(configs);
  for (auto& c : per_config) c = config_cost(rng);
  Problem p;
  for (int b = 0; b < blocks; ++b) {
    const double scale = length(rng);
    double sum = 0;
    for (int c = 0; c < configs; ++c) {
      p.units.push_back({b, scale * per_config[c]});
      sum += scale * per_config[c];
    }
    p.overhead.push_back(overhead_share * sum);
  }
  return p;
}

// Checks the plan's own statistics against the assignment.
void expect_consistent(const Problem& p, const ShardPlan& plan, int ranks) {
  ASSERT_EQ(plan.rank_of.size(), p.units.size());
  ASSERT_EQ(plan.load.size(), static_cast<size_t>(ranks));
  std::vector<double> load(ranks, 0);
  std::vector<std::set<int64_t>> blocks(ranks);
  std::vector<int64_t> units(ranks, 0);
  for (size_t u = 0; u < p.units.size(); ++u) {
    const int r = plan.rank_of[u];
    ASSERT_GE(r, 0);
    ASSERT_LT(r, ranks);
    load[r] += p.units[u].cost;
    blocks[r].insert(p.units[u].block);
    ++units[r];
  }
  int64_t total_units = 0;
  for (int r = 0; r < ranks; ++r) {
    for (int64_t b : blocks[r]) load[r] += p.overhead[b];
    EXPECT_NEAR(plan.load[r], load[r], 1e-9 * (1 + load[r]));
    EXPECT_EQ(plan.units[r], units[r]);
    EXPECT_EQ(plan.blocks[r], static_cast<int64_t>(blocks[r].size()));
    total_units += plan.units[r];
  }
  EXPECT_EQ(total_units, static_cast<int64_t>(p.units.size()));  // each unit exactly once
}

TEST(Sharding, EveryUnitAssignedExactlyOnce) {
  for (int ranks : {1, 2, 3, 4, 7, 16, 64}) {
    const Problem p = sweep_like(9, 60, 7);
    const ShardPlan plan = assign_units(p.units, p.overhead, ranks);
    expect_consistent(p, plan, ranks);
  }
}

TEST(Sharding, Deterministic) {
  const Problem p = sweep_like(15, 37, 3);
  for (int ranks : {2, 5, 64}) {
    const ShardPlan a = assign_units(p.units, p.overhead, ranks);
    const ShardPlan b = assign_units(p.units, p.overhead, ranks);
    EXPECT_EQ(a.rank_of, b.rank_of);
    EXPECT_EQ(a.load, b.load);
  }
}

// The most loaded rank is within one unit and one block overhead of the mean
// of the actual loads (which includes the overheads of split blocks); splits
// add few reads; and with at least as many blocks as ranks the makespan is
// close to the ideal (every overhead paid once).
TEST(Sharding, BalanceBoundAgainstIdeal) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    for (int blocks : {3, 9, 30}) {
      for (int ranks : {2, 3, 4, 8, 16, 64}) {
        const Problem p = sweep_like(blocks, 60, seed);
        const ShardPlan plan = assign_units(p.units, p.overhead, ranks);
        expect_consistent(p, plan, ranks);
        double max_unit = 0, max_overhead = 0, total = 0;
        for (const auto& u : p.units) max_unit = std::max(max_unit, u.cost);
        for (double o : p.overhead) max_overhead = std::max(max_overhead, o);
        for (double l : plan.load) total += l;
        const int64_t reads = std::accumulate(plan.blocks.begin(), plan.blocks.end(), int64_t{0});
        SCOPED_TRACE(::testing::Message()
                     << "seed " << seed << " blocks " << blocks << " ranks " << ranks
                     << " imbalance " << plan.imbalance() << " reads " << reads);
        // Refinement bound, loosened by the 2% the plan accepts to keep blocks whole.
        EXPECT_LE(plan.max_load(), 1.02 * (total / ranks + max_unit + max_overhead));
        EXPECT_GE(plan.max_load(), plan.ideal - 1e-9);
        EXPECT_LE(reads, blocks + 2 * ranks);
        if (ranks <= blocks) {
          EXPECT_LT(plan.imbalance(), 1.05);
        } else {
          // Every rank that works reads a block: ranks - blocks extra reads at least.
          double min_overhead = max_overhead;
          for (double o : p.overhead) min_overhead = std::min(min_overhead, o);
          const double lower = plan.ideal + (ranks - blocks) * min_overhead / ranks;
          EXPECT_LE(plan.max_load(), lower + max_unit + max_overhead);
        }
      }
    }
  }
}

TEST(Sharding, BlocksStayWholeWhenBalanceAllows) {
  // 8 equal blocks on 4 ranks: two whole blocks each, nothing split.
  Problem p;
  for (int b = 0; b < 8; ++b) {
    for (int c = 0; c < 10; ++c) p.units.push_back({b, 1.0 + 0.1 * c});
    p.overhead.push_back(2.0);
  }
  const ShardPlan plan = assign_units(p.units, p.overhead, 4);
  expect_consistent(p, plan, 4);
  EXPECT_EQ(plan.split_blocks, 0);
  EXPECT_NEAR(plan.imbalance(), 1.0, 1e-12);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(plan.blocks[r], 2);
  // A block's units are on one rank.
  std::map<int64_t, std::set<int>> ranks_of_block;
  for (size_t u = 0; u < p.units.size(); ++u) {
    ranks_of_block[p.units[u].block].insert(plan.rank_of[u]);
  }
  for (const auto& [b, r] : ranks_of_block) EXPECT_EQ(r.size(), 1u) << "block " << b;
}

TEST(Sharding, SplitsOnlyWhatBalanceNeeds) {
  // 3 equal blocks on 2 ranks: one block must be shared, the other two stay whole.
  const Problem p = equal_blocks(3, 20, 1.0, 0.5);
  const ShardPlan plan = assign_units(p.units, p.overhead, 2);
  expect_consistent(p, plan, 2);
  EXPECT_EQ(plan.split_blocks, 1);
  EXPECT_LT(plan.imbalance(), 1.03);
}

TEST(Sharding, BlockLargerThanFairShareIsSplit) {
  const Problem p = equal_blocks(1, 40, 1.0, 1.0);
  const ShardPlan plan = assign_units(p.units, p.overhead, 4);
  expect_consistent(p, plan, 4);
  for (int r = 0; r < 4; ++r) {
    EXPECT_GE(plan.units[r], 9);
    EXPECT_EQ(plan.blocks[r], 1);
  }
  EXPECT_EQ(plan.split_blocks, 1);
}

TEST(Sharding, ExpensiveOverheadKeepsBlocksWhole) {
  // Reading a block costs more than the imbalance a split would remove.
  const Problem p = equal_blocks(3, 4, 1.0, 100.0);
  const ShardPlan plan = assign_units(p.units, p.overhead, 2);
  expect_consistent(p, plan, 2);
  EXPECT_EQ(plan.split_blocks, 0);
}

TEST(Sharding, MoreRanksThanUnitsAndEdgeCases) {
  Problem p = sweep_like(1, 3, 5);
  const ShardPlan plan = assign_units(p.units, p.overhead, 8);
  expect_consistent(p, plan, 8);
  EXPECT_GE(std::count(plan.units.begin(), plan.units.end(), 0), 5);

  const ShardPlan empty = assign_units({}, {}, 4);
  EXPECT_TRUE(empty.rank_of.empty());
  EXPECT_EQ(empty.max_load(), 0);
  EXPECT_EQ(empty.imbalance(), 1.0);

  EXPECT_THROW(assign_units(p.units, p.overhead, 0), ConfigError);
  EXPECT_THROW(assign_units({{0, -1.0}}, {0.0}, 2), ConfigError);
  EXPECT_THROW(assign_units({{3, 1.0}}, {0.0}, 2), ConfigError);
}

}  // namespace
}  // namespace kvsim
