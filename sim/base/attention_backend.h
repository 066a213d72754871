// The attention backend seam (docs/architecture.md, "The attention backend").
//
// The replay engine never computes attention itself: it asks a backend for
//   (a) the exact attention of a layer at all measured steps (outputs, log-sum-exp, top token),
//   (b) the exact prefill attention summed per column over a stage's prompt rows, and
//   (c) the attention of policies' caches at a step: probabilities for the stages that observe
//       them, and at measured steps the compressed outputs and what the metrics need.
// Each call takes a batch: all measured steps of a layer in (a), any number of (layer, kv head)
// requests in (b) and (c), of one or several policies (a task carries its own cache and step).
// A backend decides how to batch the work (one GEMM-shaped kernel over many heads and steps,
// one launch over a ragged set of caches); the engine keeps the policies' state on the host.
//
// The interface lives in the base layer so that every backend -- the CPU one in sim/, a CUDA one
// in gpu/ -- can implement it without seeing the engine. Backends are stateless between calls
// and must allow concurrent calls from several threads (the engine replays units in parallel).
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "sim/base/head_cache.h"
#include "sim/base/trace_types.h"

namespace kvsim {

struct KeyTiles;  // sim/base/attention.h

// An allocator whose resize() leaves new floats uninitialised: for buffers that are written
// whole before they are read (zeroing ExactLayer::scores, layers of up to 256 MiB, was a pass
// over memory of its own).
template <typename T>
struct UninitializedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  UninitializedAllocator() = default;
  template <typename U>
  UninitializedAllocator(const UninitializedAllocator<U>&) {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialised: no value for a float
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// (a) Exact attention of one layer at its measured steps, shared by every policy of a unit.
struct ExactLayer {
  int slot = 0;
  std::vector<float> out;     // [measured, num_q_heads, head_dim]
  std::vector<double> lse;    // [measured, num_q_heads]
  std::vector<int32_t> top1;  // [measured, num_q_heads]: position of the largest exact score
                              // (the lowest such position on ties)
  // The exact scores (scale * q . k, before the softmax) of measured step m over its window
  // [score_first[m], step]: a [num_q_heads, step - score_first[m] + 1] block at score_offset[m].
  // Empty when a backend does not keep them (or they would not fit in kMaxScoreBytes). The
  // scores of an eviction-only policy's cache are a subset of them (shared scoring).
  static constexpr size_t kMaxScoreBytes = size_t{256} << 20;
  std::vector<float, UninitializedAllocator<float>> scores;  // written whole by the backend
  std::vector<size_t> score_offset;                          // [measured]
  std::vector<int64_t> score_first;                          // [measured]
};

// (b) One request for prefill column sums: for each query head j of the kv head's group and
// candidate i, the exact causal attention (softmax over the layer's window) of the prompt rows
// [prompt_len - rows, prompt_len) summed over those rows, at candidate position i.
struct PrefillSumsTask {
  const LayerData* layer = nullptr;
  int kv_head = 0;
  int window = 0;  // the layer's sliding window, 0 = none
  int64_t prompt_len = 0;
  int64_t rows = 0;                      // counted back from the end of the prompt; -1 = all
  std::span<const int32_t> candidates;   // ascending prompt positions
  std::vector<float>* colsum = nullptr;  // out: [group, candidates.size()]
};

// (c) What the backend returns for one cache at one step. The caller owns it (and reuses it
// across steps, so that the vectors keep their capacity).
struct CacheAttention {
  std::vector<float> scores;    // [group, n] scale * q . k^ over the cache rows
  std::vector<float> probs;     // [group, n] softmax of `scores`
  std::vector<double> lse_hat;  // [group] log-sum-exp of `scores`
  // Measured steps only:
  std::vector<float> out_hat;     // [group, head_dim] sum_i probs_i v^_i
  std::vector<float> kept_mass;   // [group] sum over the cache's positions of the exact p_i
  std::vector<float> kept_cross;  // [group] sum over the cache's positions of p_i (raw_i - s_i)
  std::vector<int32_t> top1;      // [group] cache position of the largest compressed score (lowest
                                  // position on ties), -1 for an empty cache
};

// (c) One request: the query heads of `kv_head`'s group at `step` attend over `cache`.
// `exact_lse` ([group], the exact log-sum-exps of the step) marks a measured step: then the
// backend also fills the measured-only fields, with p_i = exp(raw_i - lse) the exact probability
// of cached position i and raw_i the exact score (trace keys), s_i the compressed score.
struct CacheAttentionTask {
  const LayerData* layer = nullptr;  // queries of the step; trace keys at the cached positions
  int kv_head = 0;
  int64_t step = 0;
  const HeadCache* cache = nullptr;
  const double* exact_lse = nullptr;  // null: not a measured step
  CacheAttention* out = nullptr;
  // Measured steps: every cached key is bitwise the trace's key at its position (the engine
  // checks; eviction-only policies). Then raw_i = s_i, and a backend may take the cache's
  // scores for the exact ones instead of scoring the trace's keys again. False: no promise.
  bool keys_exact = false;
  // Measured steps, optionally: the step's exact scores over positions [exact_first,
  // exact_first + exact_count), query head j's at exact_scores + j * exact_count (from
  // ExactLayer::scores). A backend may gather raw_i from them instead of scoring the trace's
  // keys, and with keys_exact also s_i (shared scoring).
  const float* exact_scores = nullptr;
  int64_t exact_first = 0;
  size_t exact_count = 0;
  // Measured steps, optionally: the step's exact outputs ([group, head_dim]) and top tokens
  // ([group]) of the group's query heads, and whether every cached value is bitwise the
  // trace's. A cache with keys_exact and values_exact that holds the whole exact window
  // attends exactly: a backend may take out_hat and top1 from here.
  const float* exact_out = nullptr;
  const int32_t* exact_top1 = nullptr;
  bool values_exact = false;
  // Whether the caller reads out->probs (a stage observes the attention). False lets a backend
  // leave scores and probs unfilled where the measured fields do not need them.
  bool need_probs = true;
  // Optionally, the cache's first keys already laid out as tiles (sim/base/attention.h), kept
  // by the caller for rows no event changes any more: a CPU backend then transposes only the
  // rest at each step. Bitwise the cache's keys where it has them.
  const KeyTiles* key_tiles = nullptr;
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  virtual std::string name() const = 0;
  // (a) `measured`: ascending decode positions of the layer's sequence.
  virtual ExactLayer exact_attention(const TraceMeta& meta, const LayerData& layer,
                                     std::span<const int64_t> measured) const = 0;
  // (b) Fills every task's `colsum`.
  virtual void prefill_column_sums(const TraceMeta& meta,
                                   std::span<const PrefillSumsTask> tasks) const = 0;
  // (c) Fills every task's `out`.
  virtual void cache_attention(const TraceMeta& meta,
                               std::span<const CacheAttentionTask> tasks) const = 0;
};

}  // namespace kvsim
