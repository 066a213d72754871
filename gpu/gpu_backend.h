// The GPU attention backend: AttentionBackend (sim/base/attention_backend.h) over an executor
// (gpu/attention_executor.h). Per unit it uploads each layer's Q/K/V once (at the layer's
// exact_attention call, which the engine makes first, or at first use); runs (a) the exact
// attention of all measured steps of a layer as one launch, (b) the column sums of all prefill
// tasks of a call as one tiled pass, and (c) the attention over all caches of a call as one
// launch in a ragged (indptr) layout. It keeps a copy of each cache in the executor's memory,
// updated by deltas: only rows that are new or rewritten are uploaded (gpu/backend_plan.h).
// docs/gpu.md, "The CUDA backend".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "sim/base/attention_backend.h"

namespace kvsim::gpu {

// What the backend moved, for tests and benchmarks.
struct BackendStats {
  int64_t layer_uploads = 0;
  int64_t cache_rows_attended = 0;  // rows of every task of every call
  int64_t cache_rows_uploaded = 0;  // staged by the deltas
  int64_t cache_images = 0;         // copies created (first use, or after an eviction)
  int64_t evictions = 0;            // layer or cache copies dropped to stay within the budget
};

// The caller-owned workspace of cache_attention: the host side of the ragged outputs and the
// executor's buffers, reused across calls. One per thread.
class BackendWorkspace {
 public:
  BackendWorkspace();
  ~BackendWorkspace();
  BackendWorkspace(const BackendWorkspace&) = delete;
  BackendWorkspace& operator=(const BackendWorkspace&) = delete;
  struct State;
  State& state() { return *state_; }

 private:
  std::unique_ptr<State> state_;
};

class GpuBackend : public AttentionBackend {
 public:
  // The interface's cache_attention uses a workspace from the backend's pool.
  using AttentionBackend::cache_attention;
  // (c) with the caller's workspace.
  virtual void cache_attention(const TraceMeta& meta, std::span<const CacheAttentionTask> tasks,
                               BackendWorkspace& workspace) const = 0;
  virtual BackendStats stats() const = 0;
};

// The CUDA backend on `device` (a CUDA device ordinal). `memory_budget` bounds the bytes of the
// layer and cache copies it keeps (least recently used ones are dropped beyond it; a dropped
// copy is uploaded again when used); 0 = half of the device's free memory at construction.
// Throws BackendUnavailable without a CUDA build or a visible GPU.
std::unique_ptr<GpuBackend> make_cuda_backend(int device, size_t memory_budget = 0);

// The same bookkeeping over host memory, computing with `reference` (e.g. the CPU backend,
// which must outlive it): results equal the reference's bit for bit. The CPU reference path
// of the CUDA backend, for tests on machines without a GPU.
std::unique_ptr<GpuBackend> make_host_reference_backend(const AttentionBackend& reference,
                                                        size_t memory_budget = size_t{1} << 30);

}  // namespace kvsim::gpu
