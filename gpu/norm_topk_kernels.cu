// GPU key norms and top-k selection for L2-norm eviction (contract in kernel_declarations.inc).
//
//  1. key_norm_kernel: a warp per key row; lane l sums k[c]^2 in double for c = l, l + 32, ...
//     (x^2 of a float is exact in double, so a fused multiply-add rounds exactly like the
//     reference's separate multiply and add), then a butterfly p[l] += p[l ^ m]. The squared
//     norms go to a workspace, the float norms to the output: bit-identical to the reference.
//  2. topk_select_kernel: one block per head. The squared norms are non-negative doubles, so
//     their bit patterns order like their values. An MSB-first radix select (8 passes of 8 bits,
//     a shared-memory histogram per pass) finds the pattern T of the keep-th smallest value and
//     how many of the values equal to T must be taken; a last pass in position order selects
//     v < T and the first (or last, by TiePreference) `need` values equal to T, and compacts
//     their positions with a block-wide ballot/popc scan, so they come out ascending.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "gpu/cuda_check.cuh"
#include "gpu/device.h"
#include "gpu/kernel_common.cuh"
#include "gpu/kernels.h"
#include "gpu/validate.h"

namespace kvsim::gpu {
namespace {

using std::int64_t;

using detail::kFullMask;
using detail::kWarpSize;

constexpr int kNormThreads = 256;
constexpr int kSelectThreads = 1024;
constexpr int kSelectWarps = kSelectThreads / kWarpSize;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;

__global__ void __launch_bounds__(kNormThreads)
    key_norm_kernel(const float* __restrict__ k,  // [rows, dim]  (rows = heads * tokens)
                    int64_t rows, int dim,
                    float* __restrict__ norms,  // [rows]
                    double* __restrict__ sq) {  // [rows]
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t r =
           static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
       r < rows; r += warps) {
    const float* x = k + r * dim;
    double acc = 0.0;
    for (int c = lane; c < dim; c += kWarpSize) {
      const double v = x[c];
      acc = __dadd_rn(acc, __dmul_rn(v, v));
    }
#pragma unroll
    for (int m = kWarpSize / 2; m > 0; m /= 2) {
      acc = __dadd_rn(acc, __shfl_xor_sync(kFullMask, acc, m));
    }
    if (lane == 0) {
      sq[r] = acc;
      norms[r] = static_cast<float>(__dsqrt_rn(acc));
    }
  }
}

// Exclusive prefix count of `flag` over the block (position order = thread order) and the
// block total. Every thread of the block must call it. `warp_counts` holds kSelectWarps ints.
__device__ int block_exclusive_count(bool flag, int* warp_counts, int* total) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const unsigned ballot = __ballot_sync(kFullMask, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0;
  int sum = 0;
  for (int w = 0; w < kSelectWarps; ++w) {
    if (w < warp) before += warp_counts[w];
    sum += warp_counts[w];
  }
  __syncthreads();  // warp_counts is reused by the next call
  *total = sum;
  return before + in_warp;
}

__global__ void __launch_bounds__(kSelectThreads)
    topk_select_kernel(const double* __restrict__ sq,  // [heads, n]
                       int64_t n, int64_t keep, int higher_index_first,
                       std::int32_t* __restrict__ kept) {  // [heads, keep]
  __shared__ unsigned s_hist[kRadixBins];
  __shared__ int s_warp_counts[kSelectWarps];
  __shared__ unsigned s_digit;
  __shared__ int64_t s_rank;
  __shared__ int64_t s_count;

  const int64_t h = blockIdx.x;
  const auto* bits = reinterpret_cast<const unsigned long long*>(sq + h * n);

  // Radix select: after the passes, `prefix` is the keep-th smallest pattern T, `rank` the
  // number of values equal to T to select and `eq_total` how many values equal T.
  unsigned long long prefix = 0;
  int64_t rank = keep;  // 1-based rank of the target among the values matching `prefix`
  int64_t eq_total = n;
  for (int pass = 0; pass < 64 / kRadixBits; ++pass) {
    const int shift = 64 - kRadixBits * (pass + 1);
    const unsigned long long high_mask = pass == 0 ? 0ull : (~0ull << (shift + kRadixBits));
    for (int b = threadIdx.x; b < kRadixBins; b += blockDim.x) s_hist[b] = 0;
    __syncthreads();
    // Norms of one head are alike, so most values share their high digits: aggregate equal
    // bins within the warp (one atomic per distinct bin) instead of 32 colliding atomics.
    for (int64_t chunk = 0; chunk < n; chunk += blockDim.x) {
      const int64_t t = chunk + threadIdx.x;
      unsigned bin = kRadixBins;  // sentinel: no bin
      if (t < n) {
        const unsigned long long v = bits[t];
        if ((v & high_mask) == prefix) bin = static_cast<unsigned>(v >> shift) & (kRadixBins - 1);
      }
      const unsigned peers = __match_any_sync(kFullMask, bin);
      if (bin < kRadixBins && static_cast<int>(threadIdx.x % kWarpSize) == __ffs(peers) - 1) {
        atomicAdd(&s_hist[bin], static_cast<unsigned>(__popc(peers)));
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t below = 0;
      unsigned digit = kRadixBins - 1;
      for (unsigned b = 0; b < kRadixBins; ++b) {
        if (below + s_hist[b] >= rank) {
          digit = b;
          break;
        }
        below += s_hist[b];
      }
      s_digit = digit;
      s_rank = rank - below;
      s_count = s_hist[digit];
    }
    __syncthreads();
    prefix |= static_cast<unsigned long long>(s_digit) << shift;
    rank = s_rank;
    eq_total = s_count;
    __syncthreads();  // s_digit/s_rank/s_count and s_hist are rewritten by the next pass
  }
  const unsigned long long threshold = prefix;
  const int64_t need = rank;  // 1 <= need <= eq_total

  int64_t written = 0;
  int64_t eq_seen = 0;
  for (int64_t chunk = 0; chunk < n; chunk += blockDim.x) {
    const int64_t t = chunk + threadIdx.x;
    const unsigned long long v = t < n ? bits[t] : ~0ull;
    const bool is_eq = t < n && v == threshold;
    const bool is_lt = t < n && v < threshold;
    int eq_chunk = 0;
    const int64_t eq_before = eq_seen + block_exclusive_count(is_eq, s_warp_counts, &eq_chunk);
    const bool take_eq =
        is_eq && (higher_index_first ? eq_before >= eq_total - need : eq_before < need);
    const bool selected = is_lt || take_eq;
    int sel_chunk = 0;
    const int64_t pos = written + block_exclusive_count(selected, s_warp_counts, &sel_chunk);
    if (selected) kept[h * keep + pos] = static_cast<std::int32_t>(t);
    written += sel_chunk;
    eq_seen += eq_chunk;
  }
}

}  // namespace

void key_norms_topk(const float* k, int num_heads, std::int64_t num_tokens, int head_dim,
                    std::int64_t keep, TiePreference ties, float* norms, std::int32_t* kept) {
  constexpr const char* kWhat = "gpu::key_norms_topk";
  detail::validate_norms_topk(kWhat, k, num_heads, num_tokens, head_dim, keep, norms, kept);
  require_cuda();
  if (num_tokens == 0) return;
  detail::check_device_pointers(kWhat, {{k, "k"}, {norms, "norms"}, {kept, "kept"}});
  const int64_t rows = static_cast<int64_t>(num_heads) * num_tokens;
  detail::StreamScratch sq(static_cast<std::size_t>(rows) * sizeof(double));
  const unsigned blocks = detail::grid_for(rows, kNormThreads / kWarpSize, 16);  // a warp per row
  key_norm_kernel<<<blocks, kNormThreads>>>(k, rows, head_dim, norms, sq.as<double>());
  KVSIM_CUDA_CHECK_LAUNCH("key_norm_kernel");
  if (keep == 0) return;
  topk_select_kernel<<<static_cast<unsigned>(num_heads), kSelectThreads>>>(
      sq.as<double>(), num_tokens, keep, ties == TiePreference::kHigherIndex ? 1 : 0, kept);
  KVSIM_CUDA_CHECK_LAUNCH("topk_select_kernel");
}

}  // namespace kvsim::gpu
