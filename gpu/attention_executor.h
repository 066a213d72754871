// Where the GPU attention backend's arithmetic runs (gpu/gpu_backend.h). The backend keeps the
// bookkeeping (which layer and cache copies exist, their deltas, the ragged layout, the
// workspace); an executor holds the copies and runs the three operations over them:
//   - the CUDA executor (gpu/cuda_executor.cu): device memory and kernels;
//   - the host executor (gpu/host_executor.cc): host memory and a reference AttentionBackend
//     (the CPU one, in the tests), so that the bookkeeping is tested on a machine without a GPU:
//     any error in it makes its results differ from the reference's.
// Internal to the GPU layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "gpu/backend_plan.h"
#include "sim/base/attention_backend.h"
#include "sim/base/trace_types.h"

namespace kvsim::gpu {

// A layer's Q/K/V in the executor's memory, uploaded once per unit.
class LayerImage {
 public:
  virtual ~LayerImage() = default;
  virtual size_t bytes() const = 0;
};

// The executor's copy of one (layer, kv head) cache, updated by deltas.
class CacheImage {
 public:
  virtual ~CacheImage() = default;
  virtual size_t bytes() const = 0;
};

// Executor memory that belongs to a workspace (device buffers of one call), grown as needed.
class ExecutorScratch {
 public:
  virtual ~ExecutorScratch() = default;
};

// One cache-attention call in the ragged layout: the tasks as the engine gave them, with the
// images of their layers and caches.
struct RaggedCall {
  const TraceMeta* meta = nullptr;
  std::span<const CacheAttentionTask> tasks;
  std::span<const LayerImage* const> layers;  // [tasks]
  std::span<const CacheImage* const> caches;  // [tasks]
  const RaggedLayout* layout = nullptr;
};

struct PrefillCall {
  const TraceMeta* meta = nullptr;
  std::span<const PrefillSumsTask> tasks;
  std::span<const LayerImage* const> layers;  // [tasks]
  const PrefillLayout* layout = nullptr;
};

class AttentionExecutor {
 public:
  virtual ~AttentionExecutor() = default;
  virtual std::string name() const = 0;
  virtual std::unique_ptr<LayerImage> upload_layer(const LayerData& layer) = 0;
  virtual std::unique_ptr<CacheImage> new_cache_image(int head_dim) = 0;
  // `plan` against the image's current rows; `positions` all rows' positions after the delta.
  virtual void apply_delta(CacheImage& image, const CacheDeltaPlan& plan,
                           std::span<const int32_t> positions, std::span<const float> staged_keys,
                           std::span<const float> staged_values) = 0;
  virtual ExactLayer exact_attention(const TraceMeta& meta, const LayerImage& layer,
                                     std::span<const int64_t> measured) = 0;
  // Writes the column sums of every task, [colsum_indptr.back()], into `colsums`.
  virtual void prefill_column_sums(const PrefillCall& call,
                                   std::unique_ptr<ExecutorScratch>& scratch,
                                   std::vector<float>& colsums) = 0;
  // Fills `outputs` (already sized for the layout).
  virtual void cache_attention(const RaggedCall& call, std::unique_ptr<ExecutorScratch>& scratch,
                               RaggedOutputs& outputs) = 0;
};

// The CUDA executor on `device` (throws BackendUnavailable without CUDA or a GPU).
std::unique_ptr<AttentionExecutor> make_cuda_executor(int device);
// Half of `device`'s free memory: the default budget of the CUDA backend's copies.
size_t cuda_default_budget(int device);
// The host executor over `reference` (which must outlive it).
std::unique_ptr<AttentionExecutor> make_host_executor(const AttentionBackend& reference);

}  // namespace kvsim::gpu
