// Assignment of sweep work units to MPI ranks: a pure function of the units,
// their estimated costs and the rank count (no MPI here; see docs/sweeps.md).
//
// A unit is one (trace, sequence, layer group, config). Units that read the
// same trace data -- the same (trace, sequence, layer group), a "block" -- share
// an overhead paid once per rank that holds any of them (reading the block and
// computing its exact attention). The plan keeps a block's units on one rank
// whenever balance allows: it splits blocks across ranks only when that lowers
// the estimated makespan by more than 2% (so always for a block well above the
// fair share), and then at most ranks - 1 of them, plus single-unit moves of
// the final refinement.
#pragma once

#include <cstdint>
#include <vector>

namespace kvsim {

struct ShardUnit {
  int64_t block = 0;  // index into the block overheads
  double cost = 0;    // estimated cost of this unit alone (>= 0)
};

struct ShardPlan {
  std::vector<int> rank_of;     // [units] the rank that runs each unit
  std::vector<double> load;     // [ranks] estimated cost, block overheads included
  std::vector<int64_t> units;   // [ranks] units per rank
  std::vector<int64_t> blocks;  // [ranks] distinct blocks each rank reads
  double ideal = 0;             // (unit costs + every block overhead once) / ranks
  int64_t split_blocks = 0;     // blocks read by more than one rank
  double max_load() const;      // the estimated makespan
  double imbalance() const;     // max_load() / ideal (1 = perfect)
};

// Deterministic: the same inputs give the same plan on every rank.
// `block_overhead[b]` is the cost of reading block b and its shared work, paid
// once per rank that runs any of its units. Throws ConfigError when ranks < 1,
// a cost is negative or not finite, or a unit names a block out of range.
ShardPlan assign_units(const std::vector<ShardUnit>& units,
                       const std::vector<double>& block_overhead, int ranks);

}  // namespace kvsim
