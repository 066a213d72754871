// GPU replay attention (contract in kernel_declarations.inc, launch shape in kernels.h).
//
// Split-KV decode attention, two kernels:
//  1. attention_split_kernel, grid (num_q_heads, num_splits), kAttnThreads threads: the block
//     owns query head `blockIdx.x` and the token range of chunk `blockIdx.y`. Each warp walks
//     its tokens kTokensPerIter at a time with an online (running-max) softmax: lane `l` holds
//     the head dimensions l, l + 32, ... of q and of its output accumulator, so every K/V row
//     load is one coalesced 32-float transaction per register. The warps are merged through
//     shared memory; with one split the block writes the final out/lse, otherwise its partial
//     (max, sum, unnormalised accumulator) goes to a workspace.
//  2. attention_combine_kernel, one block of HEAD_DIM threads per query head, rescales the
//     partials to their common maximum and writes out/lse.
// Every split is non-empty (the launcher chooses the chunk length first), so every block and
// every head sees at least one finite score: no -inf - -inf, no division by zero.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "gpu/cuda_check.cuh"
#include "gpu/device.h"
#include "gpu/dispatch.h"
#include "gpu/kernel_common.cuh"
#include "gpu/kernels.h"
#include "gpu/validate.h"

namespace kvsim::gpu {
namespace {

using detail::block_allreduce;
using detail::ceil_div;
using detail::kFullMask;
using detail::kWarpSize;
using detail::MaxOp;
using detail::SumOp;

constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * kWarpSize;
constexpr int kTokensPerIter = 4;                 // tokens a warp has in flight at once
constexpr std::int64_t kMinTokensPerSplit = 256;  // below this a split is not worth a block
constexpr int kMaxSplits = 1024;                  // bounds the combine kernel's shared memory
constexpr int kTargetBlocksPerSm = 4;

template <int HEAD_DIM>
__global__ void __launch_bounds__(kAttnThreads)
    attention_split_kernel(const float* __restrict__ q,  // [num_q_heads, HEAD_DIM]
                           const float* __restrict__ k,  // [num_kv_heads, num_tokens, HEAD_DIM]
                           const float* __restrict__ v,  // [num_kv_heads, num_tokens, HEAD_DIM]
                           int q_per_kv, std::int64_t num_tokens, std::int64_t tokens_per_split,
                           float scale,
                           float* __restrict__ part_acc,  // [num_q_heads, num_splits, HEAD_DIM]
                           float* __restrict__ part_ml,   // [num_q_heads, num_splits, 2]
                           float* __restrict__ out,       // [num_q_heads, HEAD_DIM]
                           float* __restrict__ lse) {     // [num_q_heads]
  static_assert(HEAD_DIM % kWarpSize == 0, "head_dim must be a multiple of the warp size");
  constexpr int kPerLane = HEAD_DIM / kWarpSize;
  __shared__ float s_max[kAttnWarps];
  __shared__ float s_sum[kAttnWarps];
  __shared__ float s_acc[kAttnWarps][HEAD_DIM];

  const int head = blockIdx.x;
  const int split = blockIdx.y;
  const int num_splits = gridDim.y;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;

  const std::int64_t begin = static_cast<std::int64_t>(split) * tokens_per_split;
  const std::int64_t end =
      begin + tokens_per_split < num_tokens ? begin + tokens_per_split : num_tokens;
  const std::int64_t kv_head = head / q_per_kv;
  const float* kh = k + kv_head * num_tokens * HEAD_DIM + lane;
  const float* vh = v + kv_head * num_tokens * HEAD_DIM + lane;

  float qr[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    qr[j] = q[static_cast<std::int64_t>(head) * HEAD_DIM + lane + j * kWarpSize];
  }

  float run_max = -INFINITY;  // running maximum of the scores seen by this warp
  float run_sum = 0.0f;       // sum of exp(score - run_max)
  float acc[kPerLane];        // sum of exp(score - run_max) * v, this lane's dimensions
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) acc[j] = 0.0f;

  // `t0 < end` and `t0 + u < end` are the same for all lanes: no divergence around shuffles.
  for (std::int64_t t0 = begin + static_cast<std::int64_t>(warp) * kTokensPerIter; t0 < end;
       t0 += static_cast<std::int64_t>(kAttnWarps) * kTokensPerIter) {
    float s[kTokensPerIter];
#pragma unroll
    for (int u = 0; u < kTokensPerIter; ++u) {
      s[u] = 0.0f;
      if (t0 + u < end) {
        const float* kr = kh + (t0 + u) * HEAD_DIM;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) s[u] = fmaf(qr[j], kr[j * kWarpSize], s[u]);
      }
    }
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
#pragma unroll
      for (int u = 0; u < kTokensPerIter; ++u) s[u] += __shfl_xor_sync(kFullMask, s[u], offset);
    }

    float new_max = run_max;
#pragma unroll
    for (int u = 0; u < kTokensPerIter; ++u) {
      if (t0 + u < end) {
        s[u] *= scale;
        new_max = fmaxf(new_max, s[u]);
      }
    }
    const float correction = expf(run_max - new_max);  // 0 on the first iteration (-inf)
    run_sum *= correction;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] *= correction;
#pragma unroll
    for (int u = 0; u < kTokensPerIter; ++u) {
      if (t0 + u < end) {
        const float p = expf(s[u] - new_max);
        run_sum += p;
        const float* vr = vh + (t0 + u) * HEAD_DIM;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) acc[j] = fmaf(p, vr[j * kWarpSize], acc[j]);
      }
    }
    run_max = new_max;
  }

  // Merge the warps. A warp that saw no token has run_max == -inf and weight 0.
  if (lane == 0) {
    s_max[warp] = run_max;
    s_sum[warp] = run_sum;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) s_acc[warp][lane + j * kWarpSize] = acc[j];
  __syncthreads();

  float block_max = -INFINITY;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) block_max = fmaxf(block_max, s_max[w]);
  float weight[kAttnWarps];
  float block_sum = 0.0f;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) {
    weight[w] = s_max[w] == -INFINITY ? 0.0f : expf(s_max[w] - block_max);
    block_sum = fmaf(s_sum[w], weight[w], block_sum);
  }

  const std::int64_t part = static_cast<std::int64_t>(head) * num_splits + split;
  for (int d = threadIdx.x; d < HEAD_DIM; d += kAttnThreads) {
    float a = 0.0f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) a = fmaf(s_acc[w][d], weight[w], a);
    if (num_splits == 1) {
      out[static_cast<std::int64_t>(head) * HEAD_DIM + d] = a / block_sum;
    } else {
      part_acc[part * HEAD_DIM + d] = a;
    }
  }
  if (threadIdx.x == 0) {
    if (num_splits == 1) {
      lse[head] = block_max + logf(block_sum);
    } else {
      part_ml[part * 2] = block_max;
      part_ml[part * 2 + 1] = block_sum;
    }
  }
}

template <int HEAD_DIM>
__global__ void __launch_bounds__(HEAD_DIM) attention_combine_kernel(
    const float* __restrict__ part_acc,  // [num_q_heads, num_splits, HEAD_DIM]
    const float* __restrict__ part_ml,   // [num_q_heads, num_splits, 2]
    int num_splits,
    float* __restrict__ out,    // [num_q_heads, HEAD_DIM]
    float* __restrict__ lse) {  // [num_q_heads]
  constexpr int kWarps = HEAD_DIM / kWarpSize;
  __shared__ float s_weight[kMaxSplits];
  __shared__ float s_scratch[kWarps];

  const int head = blockIdx.x;
  const int tid = threadIdx.x;
  const float* ml = part_ml + static_cast<std::int64_t>(head) * num_splits * 2;

  float local_max = -INFINITY;
  for (int s = tid; s < num_splits; s += HEAD_DIM) local_max = fmaxf(local_max, ml[2 * s]);
  const float global_max = block_allreduce<kWarps>(local_max, s_scratch, MaxOp{});

  float local_sum = 0.0f;
  for (int s = tid; s < num_splits; s += HEAD_DIM) {
    const float w = expf(ml[2 * s] - global_max);
    s_weight[s] = w;
    local_sum = fmaf(ml[2 * s + 1], w, local_sum);
  }
  // The reduction's __syncthreads() also publishes s_weight.
  const float global_sum = block_allreduce<kWarps>(local_sum, s_scratch, SumOp{});

  const float* acc = part_acc + static_cast<std::int64_t>(head) * num_splits * HEAD_DIM + tid;
  float a = 0.0f;
  for (int s = 0; s < num_splits; ++s)
    a = fmaf(acc[static_cast<std::int64_t>(s) * HEAD_DIM], s_weight[s], a);
  out[static_cast<std::int64_t>(head) * HEAD_DIM + tid] = a / global_sum;
  if (tid == 0) lse[head] = global_max + logf(global_sum);
}

}  // namespace

void replay_attention(const float* q, const float* k, const float* v, int num_q_heads,
                      int num_kv_heads, std::int64_t num_tokens, int head_dim, float scale,
                      float* out, float* lse) {
  constexpr const char* kWhat = "gpu::replay_attention";
  detail::validate_attention(kWhat, q, k, v, out, lse, num_q_heads, num_kv_heads, num_tokens,
                             head_dim, scale);
  require_cuda();
  detail::check_device_pointers(kWhat, {{q, "q"}, {k, "k"}, {v, "v"}, {out, "out"}, {lse, "lse"}});

  // Enough blocks to fill the GPU, but no split shorter than kMinTokensPerSplit. The chunk
  // length is fixed first and the split count derived from it, so no split is empty.
  const std::int64_t target_blocks =
      static_cast<std::int64_t>(kTargetBlocksPerSm) * detail::current_device_sm_count();
  std::int64_t splits = ceil_div(target_blocks, num_q_heads);
  splits = std::min(splits, ceil_div(num_tokens, kMinTokensPerSplit));
  splits = std::clamp<std::int64_t>(splits, 1, kMaxSplits);
  const std::int64_t tokens_per_split = ceil_div(num_tokens, splits);
  splits = ceil_div(num_tokens, tokens_per_split);

  const int q_per_kv = num_q_heads / num_kv_heads;
  const dim3 grid(static_cast<unsigned>(num_q_heads), static_cast<unsigned>(splits));

  KVSIM_DISPATCH_HEAD_DIM(head_dim, kHeadDim, [&] {
    if (splits == 1) {
      attention_split_kernel<kHeadDim><<<grid, kAttnThreads>>>(
          q, k, v, q_per_kv, num_tokens, tokens_per_split, scale, nullptr, nullptr, out, lse);
      KVSIM_CUDA_CHECK_LAUNCH("attention_split_kernel");
      return;
    }
    const std::size_t parts = static_cast<std::size_t>(num_q_heads) * splits;
    detail::StreamScratch ws(parts * (kHeadDim + 2) * sizeof(float));
    float* part_acc = ws.as<float>();              // [num_q_heads, splits, kHeadDim]
    float* part_ml = part_acc + parts * kHeadDim;  // [num_q_heads, splits, 2]
    attention_split_kernel<kHeadDim><<<grid, kAttnThreads>>>(q, k, v, q_per_kv, num_tokens,
                                                             tokens_per_split, scale, part_acc,
                                                             part_ml, nullptr, nullptr);
    KVSIM_CUDA_CHECK_LAUNCH("attention_split_kernel");
    attention_combine_kernel<kHeadDim>
        <<<num_q_heads, kHeadDim>>>(part_acc, part_ml, static_cast<int>(splits), out, lse);
    KVSIM_CUDA_CHECK_LAUNCH("attention_combine_kernel");
  });
}

}  // namespace kvsim::gpu
