// One policy's pipeline over one shard (a sequence and a group of layers): the caches it
// holds and the events that change them -- the prompt at prefill, then one token per decode
// step -- and the stages' attention feedback. The replay engine (replay_shard, sim/engine.cc)
// and the live mode (sim/live_session.h) both drive the policies through it, so that a policy
// sees the same calls in either; they differ only in where the rows come from (a trace, or a
// model producing them) and what they do with the caches (measure, or attend).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <tuple>
#include <vector>

#include "policies/policy.h"
#include "sim/base/attention.h"
#include "sim/base/attention_backend.h"
#include "sim/kv_row_terms.h"

namespace kvsim {

// Exact prefill attention column sums over a layer's whole prompt window,
// shared by the policies of one unit (H2O, MiKV, SnapKV all ask for them, and
// a sweep runs many configurations of each). Keyed by (slot, kv head, rows).
struct PrefillAttentionCache {
  std::map<std::tuple<int, int, int64_t>, std::vector<float>> entries;
  AttentionRowMemo rows;  // exact attention rows of decode steps (the oracle's), the same way
};

class ShardDriver {
 public:
  // `layers` are aligned with `slots`; the driver reads them (and the stages do) only at
  // positions <= the current event's step, so a caller may fill them as it goes. The stages'
  // seed is derived from (seed, sequence, slots[0]).
  ShardDriver(const TraceMeta& meta, int sequence, int64_t prompt_len, int64_t num_tokens,
              const std::vector<int>& slots, const std::vector<const LayerData*>& layers,
              const PolicySpec& policy,
              const std::vector<std::shared_ptr<const PolicyState>>& prepared, uint64_t seed,
              PrefillAttentionCache* prefill_cache, const AttentionBackend& backend);

  // Keep the K/V error terms of every cache's final rows (sim/kv_row_terms.h) from now on, for
  // replay's measured steps; call before prefill(). The live mode does not measure them.
  void track_row_terms() { ledgers_.resize(caches_.size()); }
  const RowTermsLedger& ledger(int local, int kv_head) const {
    return ledgers_[local * num_kv_heads_ + kv_head];
  }
  // Keep every cache's final rows' keys as tiles too (CacheAttentionTask::key_tiles), so that a
  // cache whose keys a stage changed (quantized, merged) is not transposed whole at every
  // measured step; call before prefill(). The tiles are made on the first key_tiles() call.
  void track_key_tiles() {
    tiles_.clear();
    tiles_.resize(caches_.size());
  }
  // The cache's final rows' keys as tiles (whole tiles only), brought up to date; null when not
  // tracked.
  const KeyTiles* key_tiles(int local, int kv_head);
  // The prompt (positions 0..prompt_len-1) arrives at once, for every layer of the group.
  void prefill();
  // Token `step` arrives at every layer of the group: entries out of a layer's window leave,
  // the evict stages select, the store inserts (and removes).
  void arrive(int64_t step);
  // Whether some stage wants the attention of its cache at every decode step.
  bool needs_decode_attention() const { return decode_attention_; }
  // Feedback after the cache of (local layer, kv head) attended at `step`: `probs` is
  // [group, cache size], the attention of the kv head's query heads over that cache.
  void observe(int local, int kv_head, int64_t step, std::span<const float> probs);

  int num_layers() const { return static_cast<int>(layers_.size()); }
  HeadCache& cache(int local, int kv_head) { return caches_[local * num_kv_heads_ + kv_head]; }
  const HeadCache& cache(int local, int kv_head) const {
    return caches_[local * num_kv_heads_ + kv_head];
  }
  std::vector<HeadCache>& caches() { return caches_; }  // [local layer][kv head]
  MemoryBits memory(int local, int kv_head) const { return pipe_.store->memory(local, kv_head); }
  // The stages' counters (added to `counters`) and, per spec stage, whether it acted (1/0).
  void report(std::map<std::string, double>& counters, std::vector<int64_t>& stage_acted) const;

 private:
  std::vector<int32_t> run_evicts(ArrivalView& view);
  void prefill_attention(int local, int kv_head, int window, int64_t rows, bool untouched);
  void extend_ledger(int local, int kv_head);
  void drop_tiles_from(int local, int kv_head, int64_t row);

  const TraceMeta& meta_;
  int64_t prompt_len_;
  std::vector<int> slots_;
  std::vector<const LayerData*> layers_;
  PrefillAttentionCache* prefill_cache_;
  const AttentionBackend& backend_;
  int num_kv_heads_;
  Pipeline pipe_;
  bool decode_attention_ = false;
  std::vector<HeadCache> caches_;
  std::vector<RowTermsLedger> ledgers_;  // per cache when track_row_terms(), else empty
  struct FinalTiles {
    std::unique_ptr<KeyTiles> tiles;  // made on first use
    size_t final_rows = 0;            // the store's last final_rows()
  };
  std::vector<FinalTiles> tiles_;    // per cache when track_key_tiles(), else empty
  std::vector<Stage*> observers_;    // stages that get attention feedback, pipeline order
  std::vector<int64_t> evicted_by_;  // entries each evict stage dropped
  std::vector<int32_t> candidates_, evict_, removed_;  // reused buffers
  std::vector<float> colsum_;
};

}  // namespace kvsim
