// Policy sweeps: a sweep file (YAML; sim/sweep_spec.h) names traces, the
// measure rule, a seed and a grid of policy specs; the sweep expands the grid,
// splits the work into units (trace, sequence, layer group, config), runs them
// on MPI ranks (sim/sweep_main.cc), checkpoints each unit, and writes one
// results file. Everything declared here is MPI-free and unit-tested; see
// docs/sweeps.md and the file layout in docs/architecture.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "policies/policy.h"
#include "sim/checkpoint.h"
#include "sim/engine.h"
#include "sim/sharding.h"
#include "sim/sweep_spec.h"
#include "trace/trace.h"

namespace kvsim {

// --- the resolved sweep ---------------------------------------------------------
// Cost model of one unit or block, in "attention multiply-adds" (see docs/sweeps.md).
struct PolicyTraits {
  // Stage::prefill_attention_rows() of every stage that asks for prefill
  // attention (-1 = all prompt rows). The engine shares the column sums of a
  // stage that sees the whole prompt (the first evict stage, or the store when
  // there is none) between the configs of a block: those rows count in the
  // block's overhead (`shared_prefill_rows`), the others in each unit.
  std::vector<int64_t> prefill_rows;
  std::vector<int64_t> shared_prefill_rows;
  bool decode_attention = false;  // Pipeline::needs_decode_attention()
  // Stage::max_cache_tokens() of every evict stage that bounds its cache: the
  // cache at step t holds at most the least of them (none: the exact cache).
  std::vector<CacheBound> cache_bounds;
  // -1 if a stage needs every prompt row, else the sum of the stages' rows.
  int64_t prefill_rows_summary() const;
};

struct SweepBlock {
  int32_t trace = 0, sequence = 0, group = 0;
  double overhead = 0;  // estimated: read + exact attention, once per rank
};

struct SweepUnit {
  UnitKey key;
  int64_t block = 0;
  double cost = 0;
};

struct Sweep {
  std::string file;
  std::vector<std::string> trace_paths;
  std::vector<std::unique_ptr<TraceReader>> traces;
  std::vector<std::vector<int>> sequences;            // [trace] sequences replayed, in order
  std::vector<std::vector<std::vector<int>>> groups;  // [trace] unit_layer_groups over all configs
  std::vector<SweepConfig> configs;
  std::vector<PolicySpec> specs;                  // [config]
  std::vector<std::vector<PolicyTraits>> traits;  // [trace][config]
  MeasureRule measure;
  uint64_t seed = 0;
  uint64_t hash = 0;                 // identity for checkpoints
  std::vector<SweepBlock> blocks;    // canonical order: trace, sequence (as listed), group
  std::vector<SweepUnit> units;      // canonical order: block, config
  std::map<UnitKey, int64_t> index;  // key -> unit

  int64_t num_runs() const { return static_cast<int64_t>(traces.size() * specs.size()); }
  int64_t run_of(const UnitKey& key) const {
    return static_cast<int64_t>(key.trace) * static_cast<int64_t>(specs.size()) + key.config;
  }
  // Every unit's index, in the order its records are concatenated into run `run`.
  std::vector<int64_t> units_of_run(int64_t run) const;
};

// Opens the traces, parses every config and checks it against every trace
// (ConfigError naming the config, its origin and the trace), checks the
// sequences, and enumerates blocks and units with their estimated costs.
// Does not read trace values (see value_check_layers).
// `trace_override`, when not empty, replaces the file's traces.
Sweep resolve_sweep(const SweepFile& file, const std::vector<std::string>& trace_override,
                    uint64_t max_configs = kDefaultMaxConfigs);

// Every (trace, sequence, slot) of every trace -- each trace's value check,
// in a fixed order so that ranks can split it.
struct LayerRef {
  int32_t trace, sequence, slot;
};
std::vector<LayerRef> value_check_layers(const Sweep& sweep);

// The text hashed into Sweep::hash (canonical specs, trace ids, sequences,
// measure, seed), exposed for docs and tests.
std::string sweep_identity(const Sweep& sweep);

// Traits of a spec, probed by building its pipeline on an empty shard;
// conservative (all prefill rows, decode attention) when that fails.
PolicyTraits probe_traits(const PolicySpec& spec, const TraceMeta& meta, const SequenceInfo& info);
double estimate_unit_cost(const TraceMeta& meta, const SequenceInfo& info,
                          const std::vector<int>& slots, const MeasureRule& measure,
                          const PolicyTraits& traits);
// `shared_prefill_rows`: the distinct shareable prefill row counts of the
// trace's configs (PolicyTraits::shared_prefill_rows), each computed once per
// block and rank.
double estimate_block_overhead(const TraceMeta& meta, const SequenceInfo& info,
                               const std::vector<int>& slots, const MeasureRule& measure,
                               const std::vector<int64_t>& shared_prefill_rows = {});

// --- running units (sim/sweep_plan.cc) ---------------------------------------------
// The data of one block (UnitData: layers, measured steps, exact attention),
// read once and shared by every config run on it. Adds the time spent reading
// and computing exact attention to `io_seconds` and `exact_seconds` if given.
UnitData load_block(const Sweep& sweep, const SweepBlock& block, double* io_seconds,
                    double* exact_seconds, const AttentionBackend* backend = nullptr);

// One config over one block: the engine's replay_unit() (the same function
// `kvsim replay` runs, so results are bit-identical), with its own wall time
// in `seconds`. `prefill_cache`, if given, shares exact prefill attention
// between the configs run on the block (one cache per thread: it is not
// thread-safe).
RunResult run_unit(const Sweep& sweep, const SweepUnit& unit, const UnitData& data,
                   const std::vector<std::shared_ptr<const PolicyState>>& prepared,
                   PrefillAttentionCache* prefill_cache = nullptr,
                   const AttentionBackend* backend = nullptr);

// --- results -----------------------------------------------------------------------
// Concatenates the partial results in canonical unit order into one RunResult
// per (trace, config) (run index trace * configs + config). `parts` is indexed
// by unit; every unit must be present.
std::vector<RunResult> assemble_runs(const Sweep& sweep, const std::vector<RunResult>& parts);

// Per-rank statistics written to /sweep/ranks.
struct RankStats {
  int64_t units = 0, blocks = 0;
  double validate_seconds = 0;  // reading trace values for the NaN/Inf check
  double io_seconds = 0;        // reading blocks
  double exact_seconds = 0;     // exact attention of blocks
  double unit_seconds = 0;      // sum of units' replay time
  double checkpoint_seconds =
      0;                      // appending checkpoint records (write, and fsync with --fsync unit)
  double fsync_seconds = 0;   // fsync of checkpoint records (in the background by default)
  double work_seconds = 0;    // wall time from the start of work to the last own unit
  double estimated_cost = 0;  // from the plan
};

struct SweepReport {
  std::string sweep_file;
  std::string kvsim_version;
  int ranks = 1;
  int threads = 1;
  int64_t units_from_checkpoint = 0;
  int64_t units_computed = 0;
  double wall_seconds = 0;     // from the start to the results being written
  double gather_seconds = 0;   // rank 0: the done messages, the reduction and the gather
  std::vector<int> unit_rank;  // [unit] rank that computed it, -1 = from checkpoint
  std::vector<RankStats> rank_stats;
};

// Writes the results file atomically: write_results() into a temporary name,
// then the sweep's additions (trace columns, /traces, /sweep), then a rename.
void write_sweep_results(const std::string& path, const Sweep& sweep,
                         const std::vector<RunResult>& runs, const std::vector<RunResult>& parts,
                         const SweepReport& report);

// Observers of a running sweep, for programs built on the driver (the MPI
// tests' tests/mpi/sweep_kill.cc kills a rank at an exact unit with one).
struct SweepHooks {
  // After a unit's checkpoint record is appended, with the rank and its count
  // of finished units; called under the rank's lock, one unit at a time.
  std::function<void(int rank, int64_t units_done)> unit_checkpointed;
  // The attention backend of `--device` other than cpu for the rank with index `local_rank`
  // on its node (kvsim passes the CUDA backend's; without it such a device is refused).
  std::function<std::unique_ptr<AttentionBackend>(const std::string& device, int local_rank)>
      make_backend;
};

// The CLI entry point (`kvsim sweep`), defined in sim/sweep_main.cc: initialises
// and finalises MPI itself; returns the exit code. argv[0] is the command name.
int run_sweep_command(int argc, char** argv, const std::string& kvsim_version,
                      const SweepHooks& hooks = {});

}  // namespace kvsim
