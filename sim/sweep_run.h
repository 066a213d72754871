// The phases of `kvsim sweep` between loading the sweep and writing its results
// (sim/sweep_main.cc runs them in order; docs/sweeps.md describes them). Each
// phase that can fail before work starts returns the failure all ranks agreed
// on; failures during the work take the job down (abort_job).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sim/checkpoint.h"
#include "sim/sweep.h"
#include "sim/sweep_mpi.h"
#include "sim/sweep_options.h"

namespace kvsim::sweep_driver {

using Clock = std::chrono::steady_clock;
// Seconds from `t` to now.
double since(Clock::time_point t);

// `x` with `precision` significant digits, for the printed tables.
std::string fmt(double x, int precision = 4);

// --dry-run: rank 0 prints the grid, the units and the plan (for --ranks or the
// job's rank count; with --resume, without the checkpoint's finished units).
Failure print_plan(const Mpi& mpi, const Options& opt, const Sweep& sweep);

// Every trace value (NaN/Inf, truncation), the layers split across ranks.
Failure check_trace_values(const Mpi& mpi, const Sweep& sweep, RankStats& stats);

// What the checkpoint directory holds when work starts.
struct ResumeState {
  std::vector<uint8_t> done;  // [unit] 1 = finished in the checkpoint (every rank)
  int32_t attempt = 1;        // this run's attempt number (every rank)
  // Rank 0 only:
  std::vector<RunResult> parts;  // [unit] partial results (the checkpoint's, then gathered)
  std::vector<int> unit_rank;    // [unit] who computed it: -1 checkpoint, -2 nobody yet
  int64_t resumed = 0;           // units taken from the checkpoint
  std::string note;              // the "resume: ..." line of the summary
};

// Rank 0 checks the output path, reads the checkpoint directory (refusing a
// foreign sweep's records, and this sweep's without --resume) and creates it;
// on success `done` and `attempt` are broadcast.
Failure read_checkpoints(const Mpi& mpi, const Options& opt, const Sweep& sweep,
                         ResumeState& resume);

// The units still to compute and the rank of each (sim/sharding.h).
struct WorkPlan {
  std::vector<int64_t> todo;  // unit indices, ascending
  std::vector<int> rank_of;   // [todo] rank
  std::vector<double> load;   // [rank] estimated cost
};
ShardPlan make_plan(const Sweep& sweep, const std::vector<uint8_t>& done, int ranks,
                    std::vector<int64_t>& todo);
// Rank 0 plans; on success the plan is broadcast.
Failure plan_work(const Mpi& mpi, const Sweep& sweep, const std::vector<uint8_t>& done,
                  WorkPlan& plan);

// This rank's checkpoint file of this attempt.
Failure open_checkpoint(const Mpi& mpi, const Options& opt, const Sweep& sweep, int32_t attempt,
                        std::unique_ptr<CheckpointWriter>& writer);

// Worker threads per rank: `requested`, or the node's cores / ranks on the node.
int worker_threads(const Mpi& mpi, int requested);

// This rank's units block by block (a block's data read once, its configs on
// `threads` threads), each appended to the checkpoint as it finishes; then the
// checkpoint is synced and closed, and rank 0 waits for every rank's progress.
// Returns (unit, partial result) in block order.
using UnitResults = std::vector<std::pair<int64_t, RunResult>>;
UnitResults run_units(const Mpi& mpi, const Options& opt, const Sweep& sweep, const WorkPlan& plan,
                      int threads, int64_t resumed, const SweepHooks& hooks,
                      std::unique_ptr<CheckpointWriter> writer, RankStats& stats,
                      const AttentionBackend* backend = nullptr);

// Totals of the computed units (count, memory bits, records), reduced onto
// rank 0 to check the gathered results against.
struct UnitTotals {
  int64_t units = 0, bits = 0, records = 0;
};

// Reduces the totals and moves every rank's partial results and statistics
// into rank 0's `resume.parts` / `all_stats` (`resume.unit_rank` records who
// computed each unit). `mine` is consumed.
UnitTotals gather_units(const Mpi& mpi, const Sweep& sweep, UnitResults& mine,
                        const RankStats& stats, ResumeState& resume,
                        std::vector<RankStats>& all_stats);

// Rank 0: every unit present, and the gathered ones agree with the reduced
// totals; returns the number of computed (not resumed) units.
int64_t check_gathered(const Sweep& sweep, const ResumeState& resume, const UnitTotals& totals);

}  // namespace kvsim::sweep_driver
