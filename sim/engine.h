// The CPU replay engine. It owns the loop: for each shard (a sequence and the
// group of layers its policies need) it streams the prompt, then one token per
// decode step, through each policy's pipeline, and at measured steps compares
// attention over the policy's cache with exact attention. See docs/replay.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "policies/policy.h"
#include "sim/base/attention_backend.h"
#include "sim/records.h"
#include "sim/shard_driver.h"
#include "trace/trace.h"

namespace kvsim {

// Which decode steps are measured.
struct MeasureRule {
  enum class Kind { kAuto, kAll, kStride, kLast };
  Kind kind = Kind::kAuto;
  int64_t n = 0;
  // "auto", "all", "stride=N", "last=N"; throws ConfigError.
  static MeasureRule parse(const std::string& text);
  std::string describe() const;
  // Measured token positions in [prompt_len, num_tokens), ascending. `auto`
  // measures every decode step up to 256 of them, else a uniform stride that
  // gives about 256 steps; the last decode step is always included.
  std::vector<int64_t> steps(int64_t prompt_len, int64_t num_tokens) const;
};

struct RunResult {
  std::string spec;      // as given
  std::string resolved;  // canonical, every parameter
  std::string stages;    // stage names
  uint64_t seed = 0;
  std::vector<StepRecord> steps;
  std::vector<KvRecord> kv;
  std::map<std::string, double> counters;  // policy-specific, summed over shards
  // Per stage of the spec (in spec order): the shards in which it acted (Stage kinds in
  // policies/policy.h, StoreStage::acted); 0 = the stage never acted over the run.
  std::vector<int64_t> stage_acted;
  double seconds = 0;
};

struct ReplayOptions {
  MeasureRule measure;
  uint64_t seed = 0;
  int threads = 0;             // 0 = all available cores
  std::vector<int> sequences;  // empty = every sequence
  // Called after each finished unit with (done, total), from one thread at a time.
  std::function<void(size_t, size_t)> progress;
  // Where attention is computed (sim/base/attention_backend.h); null = the CPU backend.
  const AttentionBackend* backend = nullptr;
  // Read and check every value of the trace (every sequence, as
  // TraceReader::validate_all_values) before any unit starts. When the trace is deflated
  // (TraceReader::deflated), the layers of the units to replay are kept from that read, up to
  // `keep_checked_bytes` of float32, so that each is decompressed once; an uncompressed layer
  // is read again by its unit (cheaper than keeping the whole trace in memory).
  bool check_values = false;
  size_t keep_checked_bytes = size_t{1} << 30;
};

// Replays every policy over the trace. Results are identical for any thread
// count. Throws kvsim errors on bad input.
std::vector<RunResult> replay(const TraceReader& trace, const std::vector<PolicySpec>& policies,
                              const ReplayOptions& options);

// The loop for one shard and one policy, exposed for tests and benchmarks.
// `layers` and `exact` are aligned with `slots` (one sequence).
RunResult replay_shard(const TraceMeta& meta, int sequence, int64_t prompt_len,
                       const std::vector<int>& slots, const std::vector<const LayerData*>& layers,
                       const std::vector<const ExactLayer*>& exact, const PolicySpec& policy,
                       const std::vector<std::shared_ptr<const PolicyState>>& prepared,
                       const std::vector<int64_t>& measured, uint64_t seed,
                       PrefillAttentionCache* prefill_cache = nullptr,
                       const AttentionBackend* backend = nullptr);

// Groups of layer slots that every policy can replay from independently: the
// union of all policies' layer groups (singletons unless a policy pairs layers).
std::vector<std::vector<int>> unit_layer_groups(const std::vector<PolicySpec>& policies,
                                                const TraceMeta& meta);

// The data of one unit (one sequence and one of unit_layer_groups()), shared
// by every policy replayed on it: the raw layers, the measured steps and exact
// attention at them. `kvsim replay` and `kvsim sweep` both build it once per
// unit and run each policy with replay_unit().
struct UnitData {
  int sequence = 0;
  int64_t prompt_len = 0;
  std::vector<int> slots;         // the unit's layer slots
  std::vector<LayerData> layers;  // aligned with `slots`
  std::vector<int64_t> measured;  // MeasureRule::steps() of the sequence
  std::vector<ExactLayer> exact;  // aligned with `slots`
};

// Computes the measured steps and exact attention of `layers` (read by the
// caller, aligned with `slots`).
UnitData make_unit_data(const TraceMeta& meta, int sequence, const SequenceInfo& info,
                        const std::vector<int>& slots, std::vector<LayerData> layers,
                        const MeasureRule& measure, const AttentionBackend* backend = nullptr);

// THE unit function: one policy over one unit, i.e. replay_shard() over each of
// the policy's layer groups that start inside the unit, merged in group order.
// Returns a partial RunResult (records, counters, and its own wall time in
// `seconds`; spec fields are left empty). `prefill_cache`, if given, shares
// exact prefill attention between the policies run on the unit (it is not
// thread-safe: one per thread).
RunResult replay_unit(const TraceMeta& meta, const UnitData& unit, const PolicySpec& policy,
                      const std::vector<std::shared_ptr<const PolicyState>>& prepared,
                      uint64_t seed, PrefillAttentionCache* prefill_cache = nullptr,
                      const AttentionBackend* backend = nullptr);

// Throws unless every sequence exists and has decode steps.
void validate_sequences(const TraceReader& trace, const std::vector<int>& sequences);

// Appends a unit's partial result to a run (records, counters, seconds).
void append_run(RunResult& into, const RunResult& part);

}  // namespace kvsim
