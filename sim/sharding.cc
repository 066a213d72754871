#include "sim/sharding.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <unordered_map>

#include "sim/base/errors.h"

namespace kvsim {

double ShardPlan::max_load() const {
  return load.empty() ? 0.0 : *std::max_element(load.begin(), load.end());
}

double ShardPlan::imbalance() const { return ideal > 0 ? max_load() / ideal : 1.0; }

namespace {

// The lowest-index rank of minimal (or maximal) load.
int extreme_rank(const std::vector<double>& load, bool want_max) {
  int best = 0;
  for (int r = 1; r < static_cast<int>(load.size()); ++r) {
    if (want_max ? load[r] > load[best] : load[r] < load[best]) best = r;
  }
  return best;
}

}  // namespace

ShardPlan assign_units(const std::vector<ShardUnit>& units,
                       const std::vector<double>& block_overhead, int ranks) {
  if (ranks < 1) throw ConfigError("sharding: rank count must be >= 1");
  const int64_t num_blocks = static_cast<int64_t>(block_overhead.size());
  for (double c : block_overhead) {
    if (!std::isfinite(c) || c < 0) throw ConfigError("sharding: bad block overhead");
  }
  std::vector<std::vector<size_t>> members(num_blocks);
  for (size_t u = 0; u < units.size(); ++u) {
    const ShardUnit& unit = units[u];
    if (!std::isfinite(unit.cost) || unit.cost < 0) {
      throw ConfigError("sharding: unit " + std::to_string(u) + " has a bad cost");
    }
    if (unit.block < 0 || unit.block >= num_blocks) {
      throw ConfigError("sharding: unit " + std::to_string(u) + " names block " +
                        std::to_string(unit.block) + " of " + std::to_string(num_blocks));
    }
    members[unit.block].push_back(u);
  }

  double total = 0;
  for (const auto& unit : units) total += unit.cost;
  for (int64_t b = 0; b < num_blocks; ++b) {
    if (!members[b].empty()) total += block_overhead[b];
  }
  ShardPlan plan;
  plan.ideal = total / ranks;
  plan.rank_of.assign(units.size(), 0);
  plan.load.assign(ranks, 0.0);
  const double eps = 1e-12 * std::max(total, 1e-300);

  // 1. Capacity search: the smallest per-rank capacity T for which a greedy
  //    packing fits every unit. Blocks go largest first, whole, onto the
  //    fullest rank where they fit (best fit). With cutting allowed, a block
  //    that fits nowhere whole is cut: the rank with the most room is filled
  //    with a prefix of its units (paying the block's overhead there) and the
  //    rest is placed the same way. Each cut fills a rank, so at most
  //    ranks - 1 blocks are split.
  std::vector<int64_t> order;
  std::vector<double> whole(num_blocks, 0);
  double max_whole_unit = 0, max_whole = 0;
  for (int64_t b = 0; b < num_blocks; ++b) {
    if (members[b].empty()) continue;
    order.push_back(b);
    whole[b] = block_overhead[b];
    for (size_t u : members[b]) {
      whole[b] += units[u].cost;
      max_whole_unit = std::max(max_whole_unit, block_overhead[b] + units[u].cost);
    }
    max_whole = std::max(max_whole, whole[b]);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return whole[a] > whole[b]; });
  auto pack = [&](double capacity, bool allow_cut, std::vector<int>& rank_of,
                  std::vector<double>& load) {
    load.assign(ranks, 0.0);
    const double slack = 1e-9 * std::max(capacity, 1e-300);
    for (int64_t b : order) {
      const double ov = block_overhead[b];
      size_t next = 0;  // first unplaced unit of members[b]
      double rest = whole[b] - ov;
      while (next < members[b].size()) {
        // Best fit for the whole remainder: the fullest rank it fits on.
        int fit = -1;
        for (int r = 0; r < ranks; ++r) {
          if (load[r] + ov + rest <= capacity + slack && (fit < 0 || load[r] > load[fit])) fit = r;
        }
        if (fit >= 0) {
          for (; next < members[b].size(); ++next) rank_of[members[b][next]] = fit;
          load[fit] += ov + rest;
          break;
        }
        if (!allow_cut) return false;
        // Cut: fill the rank with the most room with a prefix.
        const int r = extreme_rank(load, false);
        double room = capacity + slack - load[r] - ov, taken = 0;
        size_t end = next;
        while (end < members[b].size() && units[members[b][end]].cost <= room) {
          room -= units[members[b][end]].cost;
          taken += units[members[b][end]].cost;
          ++end;
        }
        if (end == next) return false;  // not even one unit fits: capacity too small
        for (size_t i = next; i < end; ++i) rank_of[members[b][i]] = r;
        load[r] += ov + taken;
        rest -= taken;
        next = end;
      }
    }
    return true;
  };
  // Bisection between a capacity that fails and one that fits; returns the
  // makespan of the packing at the smallest capacity found to fit.
  auto search = [&](bool allow_cut, std::vector<int>& rank_of, std::vector<double>& load) {
    double lo = std::max(plan.ideal, allow_cut ? max_whole_unit : max_whole);
    double hi = lo;
    for (double margin = std::max(max_whole_unit, eps); !pack(hi, allow_cut, rank_of, load);
         margin *= 2) {
      lo = hi;
      hi = lo + margin;
    }
    if (hi > lo) {
      for (int iteration = 0; iteration < 60 && hi - lo > 1e-6 * hi; ++iteration) {
        const double mid = 0.5 * (lo + hi);
        (pack(mid, allow_cut, rank_of, load) ? hi : lo) = mid;
      }
    }
    pack(hi, allow_cut, rank_of, load);
    return *std::max_element(load.begin(), load.end());
  };
  // 2. Whole blocks unless splitting some lowers the makespan by more than
  //    kKeepWhole: a split costs an extra read of the block.
  constexpr double kKeepWhole = 0.02;
  std::vector<int> split_rank(units.size(), 0);
  std::vector<double> split_load;
  const double whole_makespan = search(false, plan.rank_of, plan.load);
  const double split_makespan = ranks > 1 ? search(true, split_rank, split_load) : whole_makespan;
  if (split_makespan * (1 + kKeepWhole) < whole_makespan) {
    plan.rank_of.swap(split_rank);
    plan.load.swap(split_load);
  }
  std::vector<std::unordered_map<int64_t, int64_t>> held(ranks);  // block -> units on rank
  std::vector<std::set<size_t>> on_rank(ranks);
  for (size_t u = 0; u < units.size(); ++u) {
    ++held[plan.rank_of[u]][units[u].block];
    on_rank[plan.rank_of[u]].insert(u);
  }

  // 3. Refinement: move single units from the most to the least loaded rank
  //    while that lowers the larger of the two loads -- by any amount when the
  //    least loaded rank already reads the unit's block, by more than
  //    kKeepWhole of the makespan when the move adds a read of the block.
  const size_t max_moves = 4 * units.size() + 16;
  for (size_t iteration = 0; ranks > 1 && iteration < max_moves; ++iteration) {
    const int a = extreme_rank(plan.load, true);
    const int b = extreme_rank(plan.load, false);
    if (plan.load[a] - plan.load[b] <= eps) break;
    double best_score = plan.load[a];
    size_t best_unit = units.size();
    double best_new_a = 0, best_new_b = 0;
    for (size_t u : on_rank[a]) {
      const ShardUnit& unit = units[u];
      const double overhead = block_overhead[unit.block];
      const auto it_b = held[b].find(unit.block);
      const bool b_holds = it_b != held[b].end() && it_b->second > 0;
      const double new_a = plan.load[a] - unit.cost - (held[a][unit.block] == 1 ? overhead : 0);
      const double new_b = plan.load[b] + unit.cost + (b_holds ? 0 : overhead);
      const double score = std::max(new_a, new_b);
      const double needed = b_holds ? eps : kKeepWhole * plan.load[a];
      if (score < plan.load[a] - needed && score < best_score) {
        best_score = score;
        best_unit = u;
        best_new_a = new_a;
        best_new_b = new_b;
      }
    }
    if (best_unit == units.size()) break;
    const int64_t block = units[best_unit].block;
    if (--held[a][block] == 0) held[a].erase(block);
    ++held[b][block];
    on_rank[a].erase(best_unit);
    on_rank[b].insert(best_unit);
    plan.rank_of[best_unit] = b;
    plan.load[a] = best_new_a;
    plan.load[b] = best_new_b;
  }

  // 4. Statistics, recomputed from the assignment (no drift from the updates).
  plan.load.assign(ranks, 0.0);
  plan.units.assign(ranks, 0);
  plan.blocks.assign(ranks, 0);
  std::vector<int> readers(num_blocks, 0);
  for (int r = 0; r < ranks; ++r) {
    std::set<int64_t> blocks;
    for (size_t u : on_rank[r]) {
      plan.load[r] += units[u].cost;
      blocks.insert(units[u].block);
    }
    for (int64_t blk : blocks) {
      plan.load[r] += block_overhead[blk];
      ++readers[blk];
    }
    plan.units[r] = static_cast<int64_t>(on_rank[r].size());
    plan.blocks[r] = static_cast<int64_t>(blocks.size());
  }
  for (int n : readers) plan.split_blocks += n > 1 ? 1 : 0;
  return plan;
}

}  // namespace kvsim
