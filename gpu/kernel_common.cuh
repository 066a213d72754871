// Internal to gpu/*.cu: what every kernel file shares -- warp constants, fp16 bit-pattern
// conversions, the explicitly rounded KIVI dequantization, block-wide reductions, the launch
// helpers and the stream-ordered scratch buffer. Not a public header.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "gpu/cuda_check.cuh"

namespace kvsim::gpu::detail {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// --- device helpers ---------------------------------------------------------------------------

__device__ __forceinline__ float half_bits_to_float_dev(std::uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

// Round to nearest even, like the host's float_to_half_bits.
__device__ __forceinline__ std::uint16_t float_to_half_bits_dev(float x) {
  return __half_as_ushort(__float2half_rn(x));
}

// float(code) * scale16 + min16, explicitly rounded (the rule of cpu_reference's dequantizers).
__device__ __forceinline__ float dequant_dev(std::uint32_t code, std::uint16_t scale_bits,
                                             std::uint16_t min_bits) {
  return __fadd_rn(__fmul_rn(static_cast<float>(code), half_bits_to_float_dev(scale_bits)),
                   half_bits_to_float_dev(min_bits));
}

// All-reduce over a block of NUM_WARPS full warps; `scratch` holds NUM_WARPS values.
template <int NUM_WARPS, typename T, typename Op>
__device__ T block_allreduce(T x, T* scratch, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x = op(x, __shfl_xor_sync(kFullMask, x, offset));
  }
  if (threadIdx.x % kWarpSize == 0) scratch[threadIdx.x / kWarpSize] = x;
  __syncthreads();
  T result = scratch[0];
#pragma unroll
  for (int w = 1; w < NUM_WARPS; ++w) result = op(result, scratch[w]);
  __syncthreads();  // scratch may be reused by the caller
  return result;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

// --- host helpers -----------------------------------------------------------------------------

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Blocks for `work_items` items, `items_per_block` per block, capped at `max_blocks_per_sm` per
// SM (the kernels loop grid-stride over the rest); at least 1.
inline unsigned grid_for(std::int64_t work_items, int items_per_block, int max_blocks_per_sm) {
  const std::int64_t wanted = ceil_div(work_items, items_per_block);
  const std::int64_t cap = static_cast<std::int64_t>(current_device_sm_count()) * max_blocks_per_sm;
  const std::int64_t blocks = wanted < cap ? wanted : cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// check_device_pointer for each (pointer, name); null pointers (optional arrays) are skipped.
inline void check_device_pointers(
    const char* what, std::initializer_list<std::pair<const void*, const char*>> pointers) {
  for (const auto& [ptr, name] : pointers) {
    if (ptr != nullptr) check_device_pointer(ptr, what, name);
  }
}

// Stream-ordered scratch memory on the default stream (plain cudaMalloc where the device has
// no memory pools), released on scope exit.
class StreamScratch {
 public:
  explicit StreamScratch(std::size_t bytes) : async_(current_device_supports_memory_pools()) {
    if (async_) {
      KVSIM_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, 0));
    } else {
      KVSIM_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    }
  }
  ~StreamScratch() {
    const cudaError_t err = async_ ? cudaFreeAsync(ptr_, 0) : cudaFree(ptr_);
    if (err != cudaSuccess) (void)cudaGetLastError();
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;

  template <typename T>
  T* as() {
    return static_cast<T*>(ptr_);
  }

 private:
  bool async_;
  void* ptr_ = nullptr;
};

}  // namespace kvsim::gpu::detail
