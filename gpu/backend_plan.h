// Host-side bookkeeping of the GPU attention backend (gpu/gpu_backend.h), separated from the
// launches so that it is unit-tested on the CPU: the deltas that turn the device copy of a
// cache into the cache now, the ragged (indptr) layout of one batched cache-attention call and
// of one prefill call, and the sizes of the caller-owned workspace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "sim/base/attention_backend.h"
#include "sim/base/head_cache.h"

namespace kvsim::gpu {

// How to turn the copy of a cache the device holds (`before`, as of the last call) into the
// cache now. Row i of the new copy is row source[i] of the old copy when source[i] >= 0, else
// staged row -(source[i] + 1): the rows in `staged` (ascending) are the only ones uploaded.
struct CacheDeltaPlan {
  std::vector<int32_t> source;  // [n]
  std::vector<int32_t> staged;  // rows of the new cache to upload, ascending
  // Rows [0, kept_prefix) keep their place (source[i] == i); when every later row is staged
  // the device can write them in place instead of gathering a new copy.
  int64_t kept_prefix = 0;
  int64_t old_rows = 0;

  bool unchanged() const {
    return staged.empty() && kept_prefix == static_cast<int64_t>(source.size()) &&
           old_rows == kept_prefix;
  }
  // Only rows past the kept prefix are staged: an append (or a rewrite of the tail).
  bool in_place() const {
    return static_cast<int64_t>(source.size()) - kept_prefix == static_cast<int64_t>(staged.size());
  }
};

// A row of `now` reuses a row of `before` when both hold the same position with bitwise equal
// key and value rows; everything else is staged. Positions need not ascend (merging stores).
CacheDeltaPlan plan_cache_delta(const HeadCache& before, const HeadCache& now);

// What the device does with a plan, on host memory: the reference the executors follow and
// the tests check plans with. `staged_keys`/`staged_values` hold the staged rows in order.
void apply_cache_delta(const CacheDeltaPlan& plan, std::span<const int32_t> positions,
                       std::span<const float> staged_keys, std::span<const float> staged_values,
                       HeadCache& image);

// Gathers the staged rows of `now` ([staged, head_dim] each).
void gather_staged_rows(const CacheDeltaPlan& plan, const HeadCache& now, std::vector<float>& keys,
                        std::vector<float>& values);

// The ragged layout of one cache-attention call: task t's rows are [row_indptr[t],
// row_indptr[t + 1]) of a flat row space (FlashInfer's indptr); its scores and probabilities
// are [group, n_t] at group * row_indptr[t]; measured tasks are numbered in task order.
struct RaggedLayout {
  int group = 0, head_dim = 0;
  std::vector<int64_t> row_indptr;     // [tasks + 1]
  std::vector<int32_t> measured_slot;  // [tasks]: index among the measured tasks, or -1
  int64_t num_measured = 0;

  size_t num_tasks() const { return measured_slot.size(); }
  int64_t total_rows() const { return row_indptr.empty() ? 0 : row_indptr.back(); }
};

RaggedLayout build_ragged_layout(int group, int head_dim,
                                 std::span<const CacheAttentionTask> tasks);

// Element counts of the workspace arrays of a layout, and their byte offsets in one buffer
// (each array aligned to 256 bytes, as cudaMalloc aligns).
struct WorkspaceSizes {
  int64_t descriptors = 0;                // bytes of the per-task descriptors
  int64_t scores = 0, probs = 0;          // float [group * total_rows]
  int64_t lse_hat = 0;                    // double [tasks * group]
  int64_t exact_lse = 0;                  // double [measured * group]
  int64_t out_hat = 0;                    // float [measured * group * head_dim]
  int64_t kept_mass = 0, kept_cross = 0;  // float [measured * group]
  int64_t top1 = 0;                       // int32 [measured * group]

  struct Offsets {  // in this order: the inputs, then the outputs
    size_t descriptors, exact_lse, scores, probs, lse_hat, out_hat, kept_mass, kept_cross, top1,
        end;
  };
  Offsets offsets() const;
  size_t bytes() const { return offsets().end; }
};

WorkspaceSizes workspace_sizes(const RaggedLayout& layout, size_t descriptor_bytes);

// The host side of a call's outputs in the ragged layout (filled by an executor, then
// scattered to the tasks' CacheAttention). Part of the caller-owned workspace: reused across
// calls, so its vectors keep their capacity.
struct RaggedOutputs {
  std::vector<float> scores, probs;
  std::vector<double> lse_hat;
  std::vector<float> out_hat, kept_mass, kept_cross;
  std::vector<int32_t> top1;

  void resize_for(const RaggedLayout& layout);
};

// Copies each task's slice of `outputs` into its CacheAttention.
void scatter_outputs(const RaggedLayout& layout, const RaggedOutputs& outputs,
                     std::span<const CacheAttentionTask> tasks);

// The ragged layout of one prefill call: task t's column sums are [group, candidates_t] at
// colsum_indptr[t]; its candidates at candidate_indptr[t] of the concatenated candidates.
struct PrefillLayout {
  std::vector<int64_t> candidate_indptr;  // [tasks + 1]
  std::vector<int64_t> colsum_indptr;     // [tasks + 1]
  std::vector<int64_t> first_row;         // [tasks]: first prompt row summed
  std::vector<int64_t> row_indptr;        // [tasks + 1]: cumulative summed rows x group
};

PrefillLayout build_prefill_layout(int group, std::span<const PrefillSumsTask> tasks);

}  // namespace kvsim::gpu
