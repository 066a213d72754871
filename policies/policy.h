// The policy framework. The replay engine (sim/engine.*) owns the loop:
// prefill, then one decode step per token. A policy is a pipeline of stages,
// each supplying small steps:
//   evict stages  decide which entries leave the cache (StreamingLLM, H2O, ...);
//   a store stage decides how the kept entries are represented: fp16 (`full`),
//                 quantized (`uniform`, KIVI, ...), or merged across layers
//                 (MiniCache), and counts their bits exactly.
// Adding a policy is one .cc file with one KVSIM_REGISTER_POLICY line; an
// eviction policy that scores entries and keeps the top ones derives from
// ScorerStage (policies/scorer.h) and supplies only score().
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "policies/calibration_source.h"
#include "policies/params.h"
#include "sim/base/head_cache.h"
#include "sim/base/trace_types.h"

namespace kvsim {

enum class StageKind { kEvict, kMerge, kQuantize };
std::string stage_kind_name(StageKind kind);

// State prepared once per run before any shard (e.g. SKVQ's calibration).
struct PolicyState {
  virtual ~PolicyState() = default;
};

// Exact attention rows that several policies of one unit compute alike (the oracle's future
// attention), kept by the engine for the unit's policies and handed to them through
// ShardContext::memo. Keyed by (layer slot, kv head, step): the group's softmax rows over the
// layer's window at that step, [group, window]. One thread at a time; a stage adds a row only
// while `bytes` stays within kMaxBytes (beyond, it computes the row again).
struct AttentionRowMemo {
  static constexpr size_t kMaxBytes = size_t{128} << 20;
  std::map<std::tuple<int, int, int64_t>, std::vector<float>> rows;
  size_t bytes = 0;
};

// What a stage knows about the shard it serves: one sequence and a group of
// layers (one layer, or several for cross-layer policies).
struct ShardContext {
  const TraceMeta* meta = nullptr;
  int sequence = 0;
  std::vector<int> slots;                // layer slots in the group, ascending
  std::vector<const LayerData*> layers;  // raw data per slot in the group
  int64_t prompt_len = 0;
  int64_t num_tokens = 0;
  uint64_t seed = 0;                            // per run, sequence and group
  std::shared_ptr<const PolicyState> prepared;  // from PolicyInfo::prepare, may be null
  AttentionRowMemo* memo = nullptr;             // shared by the unit's policies, may be null
  int group_size() const { return meta->num_q_heads / meta->num_kv_heads; }
  int original_layer(int local) const { return meta->layer_ids[slots[local]]; }
};

// A stage's state per (local layer, kv head) of its shard, [local layer][kv head].
template <typename T>
class PerHead {
 public:
  PerHead() = default;
  // `initial` copied into every (local layer, kv head).
  explicit PerHead(const ShardContext& ctx, const T& initial = T())
      : num_kv_heads_(ctx.meta->num_kv_heads),
        items_(ctx.slots.size() * static_cast<size_t>(num_kv_heads_), initial) {}
  T& operator()(int local_layer, int kv_head) {
    return items_[static_cast<size_t>(local_layer) * num_kv_heads_ + kv_head];
  }
  const T& operator()(int local_layer, int kv_head) const {
    return items_[static_cast<size_t>(local_layer) * num_kv_heads_ + kv_head];
  }

 private:
  int num_kv_heads_ = 0;
  std::vector<T> items_;
};

// The most entries an evict stage leaves in any (layer, kv head) cache of its
// shard after it selected at step t: `tokens`, plus the decode tokens
// appended since the prompt (t + 1 - P) when `plus_decode` (a stage that
// compresses the prompt once). tokens < 0: no bound. Declared, not measured:
// the sweep planner's cost model reads it (sim/sweep.cc).
struct CacheBound {
  int64_t tokens = -1;
  bool plus_decode = false;
  bool bounded() const { return tokens >= 0; }
  // The bound at step t (>= P - 1) of a prompt of P tokens; -1 when unbounded.
  int64_t at(int64_t step, int64_t prompt_len) const {
    if (!bounded()) return -1;
    return plus_decode ? tokens + (step + 1 - prompt_len) : tokens;
  }
};

class Stage {
 public:
  virtual ~Stage() = default;
  // Rows of the exact prefill attention this stage needs, counted back from
  // the end of the prompt: 0 = none, -1 = all prompt rows (costs O(P^2 d)).
  virtual int64_t prefill_attention_rows() const { return 0; }
  // True if the stage wants the attention of its own cache at every decode
  // step (not only at measured steps).
  virtual bool needs_decode_attention() const { return false; }
  // The cache this stage bounds (evict stages that cap what they keep).
  virtual CacheBound max_cache_tokens() const { return {}; }

  // At prefill, before select()/insert(), when prefill_attention_rows() != 0:
  // for each query head of the kv head's group, the exact attention summed over
  // the requested prompt rows. `attention` is [group, positions.size()].
  virtual void observe_prefill(int /*local_layer*/, int /*kv_head*/,
                               std::span<const int32_t> /*positions*/,
                               std::span<const float> /*attention*/) {}
  // At a decode step, after the policy's cache attended, when
  // needs_decode_attention(): `probs` is [group, positions.size()], the
  // attention of this kv head's query heads over the policy's own cache.
  virtual void observe(int /*local_layer*/, int /*kv_head*/, int64_t /*step*/,
                       std::span<const int32_t> /*positions*/, std::span<const float> /*probs*/) {}
  // Policy-specific counters, summed over every shard of a run and written to
  // the results (e.g. MiniCache's tokens merged and retained). Called once at
  // the end of the shard.
  virtual void report(std::map<std::string, double>& /*counters*/) const {}
};

// What an evict stage sees when entries arrive (the prompt at prefill, then
// one token per decode step).
struct ArrivalView {
  int local_layer = 0;
  int kv_head = 0;
  int64_t step = 0;  // position of the newest token
  bool prefill = false;
  std::span<const int32_t> candidates;  // present entries plus the new ones, ascending
  const LayerData* raw = nullptr;       // raw Q/K/V (read only positions <= step)
};

class EvictStage : public Stage {
 public:
  // Appends to `evict` the positions (from view.candidates) to drop now.
  virtual void select(const ArrivalView& view, std::vector<int32_t>& evict) = 0;
  // At prefill, once per layer: every kv head's view (`heads[h]`, its candidates
  // after the earlier stages), after this stage observed every head's prefill
  // attention and before select() runs for any of them. A stage that decides
  // across the heads of a layer (AdaKV's budgets, TOVA's layer mean) does it here.
  virtual void prefill_layer(int /*local_layer*/, std::span<const ArrivalView> /*heads*/) {}
};

// Represents the kept entries and counts their bits. The engine calls, for one
// event, insert() for every (layer, kv head) of the group in ascending layer
// order, so that a cross-layer store can pair layers.
class StoreStage : public Stage {
 public:
  // Appends rows for `positions` (ascending, after every present row) to
  // `cache`; may also rewrite existing rows (e.g. a residual flush). Called
  // once per event for every (layer, kv head), with an empty span when the
  // new entry was evicted on arrival. `prefill` is true for the prompt's
  // event (the first call for each (layer, kv head)), false at decode steps.
  virtual void insert(int local_layer, int kv_head, HeadCache& cache,
                      std::span<const int32_t> positions, const LayerData& raw, bool prefill) = 0;
  // The engine removed these rows from `cache` (evicted or out of the window).
  virtual void removed(int local_layer, int kv_head, HeadCache& cache,
                       std::span<const int32_t> positions) = 0;
  virtual MemoryBits memory(int local_layer, int kv_head) const = 0;
  // Whether the store acted in this shard: a quantize stage stored some K or V row below
  // 16 bits (it ran its quantizer on a row), a merge stage merged two entries. `full`, the
  // reference, always counts as acting. Evict stages need no hook: the engine counts what
  // select() returns. A stage of a spec that never acts over a whole run is reported
  // (docs/replay.md, "Stages that never act").
  virtual bool acted() const = 0;
  // How many of the cache's first rows no later insert() or removed() changes (a row may
  // still be removed): the engine keeps those rows' per-row terms (the K/V errors, whether key
  // and value are the trace's) instead of recomputing them at every measured step. Must not
  // shrink between calls but by removed rows. 0, the default, is always correct; a store that
  // only appends rows returns cache.size().
  virtual size_t final_rows(int /*local_layer*/, int /*kv_head*/,
                            const HeadCache& /*cache*/) const {
    return 0;
  }
};

// A store that shares entries across layers (MiniCache). It stores what it
// keeps through an inner store: the spec's quantize stage, or fp16. The
// pipeline creates the inner store with inner_context(), whose layer slots are
// the merge stage's own streams, then hands it over with set_inner().
class MergeStage : public StoreStage {
 public:
  virtual ShardContext inner_context(const ShardContext& base) const = 0;
  virtual void set_inner(std::unique_ptr<StoreStage> inner) = 0;
};

using StageFactory = std::function<std::unique_ptr<Stage>(const Params&, const ShardContext&)>;

struct PolicyInfo {
  std::string name;
  StageKind kind = StageKind::kEvict;
  std::string summary;
  std::vector<ParamSpec> params;
  StageFactory create;
  // Optional cross-parameter check (e.g. residual % group == 0); throws ConfigError.
  std::function<void(const Params&)> check;
  // Optional: trace-dependent check (e.g. group divides head_dim); throws ConfigError.
  std::function<void(const Params&, const TraceMeta&)> check_trace;
  // Optional: groups of original layer ids that must be replayed together.
  std::function<std::vector<std::vector<int>>(const Params&, const TraceMeta&)> layer_groups;
  // Optional: runs once per run before any shard (calibration and the like).
  std::function<std::shared_ptr<const PolicyState>(const Params&, const CalibrationSource&)>
      prepare;
};

// A PolicyInfo whose stage is `StageT(params, context)`; the caller adds the
// optional hooks (check, check_trace, layer_groups, prepare).
template <typename StageT>
PolicyInfo policy_info(std::string name, StageKind kind, std::string summary,
                       std::vector<ParamSpec> params = {}) {
  PolicyInfo info;
  info.name = std::move(name);
  info.kind = kind;
  info.summary = std::move(summary);
  info.params = std::move(params);
  info.create = [](const Params& p, const ShardContext& ctx) -> std::unique_ptr<Stage> {
    return std::make_unique<StageT>(p, ctx);
  };
  return info;
}

class PolicyRegistry {
 public:
  static PolicyRegistry& instance();
  bool add(PolicyInfo info);  // throws InternalError on a duplicate name
  // Replaces the policy of the same name in place, so that parsed specs stay valid
  // (a scorer defined at run time, e.g. in Python, redefined); throws InternalError
  // when there is none.
  void replace(PolicyInfo info);
  const PolicyInfo* find(const std::string& name) const;
  std::vector<const PolicyInfo*> all() const;  // sorted by name
  std::string names() const;                   // "a, b, c"

 private:
  std::vector<std::unique_ptr<PolicyInfo>> infos_;
};

#define KVSIM_CONCAT_INNER(a, b) a##b
#define KVSIM_CONCAT(a, b) KVSIM_CONCAT_INNER(a, b)
// Registers a PolicyInfo at static-initialisation time. The policies library is
// an OBJECT library, so the linker never drops a registration.
#define KVSIM_REGISTER_POLICY(info_expr)                               \
  static const bool KVSIM_CONCAT(kvsim_registered_policy_, __LINE__) = \
      ::kvsim::PolicyRegistry::instance().add(info_expr)

// ---------------------------------------------------------------------------
// A parsed, validated composition such as `h2o:heavy=0.1+kivi:bits=2`.
struct StageSpec {
  const PolicyInfo* info = nullptr;
  Params params;
  std::string canonical() const;  // name:key=val,... with every parameter
};

class PolicySpec {
 public:
  // Parses and validates; throws ConfigError listing valid names, keys or the
  // reason a combination makes no sense.
  static PolicySpec parse(const std::string& text);
  const std::string& text() const { return text_; }
  std::string canonical() const;
  std::string stage_names() const;  // "h2o+kivi"
  const std::vector<StageSpec>& stages() const { return stages_; }
  // Checks trace-dependent constraints; throws ConfigError.
  void check_against(const TraceMeta& meta) const;
  // Groups of layer slots to replay together (singletons unless a stage needs more).
  std::vector<std::vector<int>> layer_slot_groups(const TraceMeta& meta) const;

 private:
  std::string text_;
  std::vector<StageSpec> stages_;
};

// One policy's stages instantiated for one shard. Evict stages run in spec
// order; the store is the spec's merge/quantize stage, or fp16 (`full`).
struct Pipeline {
  std::vector<std::unique_ptr<EvictStage>> evicts;
  std::unique_ptr<StoreStage> store;
  // The spec's stages in spec order (aligned with PolicySpec::stages(); the implicit fp16
  // store of a spec without a quantize stage is not one of them).
  std::vector<const Stage*> spec_stages;

  static Pipeline create(const PolicySpec& spec, const ShardContext& base,
                         const std::vector<std::shared_ptr<const PolicyState>>& prepared);
  // The most prefill rows any stage asks for (-1 = all): a cost estimate; the
  // engine computes each stage's own rows.
  int64_t prefill_attention_rows() const;
  bool needs_decode_attention() const;
};

// Runs every stage's prepare hook once; the result is indexed like spec.stages().
std::vector<std::shared_ptr<const PolicyState>> prepare_policy(const PolicySpec& spec,
                                                               const CalibrationSource& trace);

}  // namespace kvsim
