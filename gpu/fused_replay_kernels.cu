// GPU fused replay attention (contract: FusedReplayArgs in replay_types.h; design: kernels.h).
//
// Two kernels:
//  1. fused_split_kernel, grid (num_kv_heads * head_chunks, splits): block (kvh, chunk, split)
//     owns up to kMaxHeadsPerBlock query heads of kv head kvh and the token range of its split.
//     The range is walked in tiles of kTile tokens. Per tile the whole block
//       - stages the exact K/V rows (fp32, or fp16 converted to float) and the compressed K^/V^
//         rows (dequantized from the packed codes with the reference's exact float operations,
//         or the fp16 residual) in shared memory -- the cache is read from global memory once
//         per block, whatever the number of query heads it serves;
//       - then warp (j, r) -- query head j of the block, slice r of wph -- takes tokens
//         r, r + wph, ... of the tile, kTokensPerIter at a time: lane l holds dimensions
//         l, l + 32, ... of q and of its two output accumulators; a dot product is a per-lane
//         FMA chain plus a butterfly over the warp. Two online softmaxes run side by side
//         (exact: every token, running max m_r; compressed: present tokens, running max m_s)
//         with the scalar sums S = sum e^(raw-m_r), M = sum_present e^(raw-m_r),
//         C = sum_present e^(raw-m_r) (raw - s), S^ = sum_present e^(s-m_s) in double.
//     Each warp writes its partial state (no intra-block merge) to a workspace.
//  2. fused_combine_kernel, one block of HEAD_DIM threads per query head, rescales the partials
//     to their common maxima, writes out/out_hat/lse/lse_hat and computes the metrics:
//       mass = M / S,  kl = C / M + log(S^ / M) + (m_s - m_r),
//     which is the engine's (1/mass) sum p (raw - s) + lse_hat - lse - log(mass) without the
//     cancellation of two large log-sum-exps (see cpu_reference_replay.cc).
// Every split holds at least one token, so every query head has at least one finite partial;
// partials of warps that saw no token (m = -inf) get weight 0.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "gpu/cuda_check.cuh"
#include "gpu/device.h"
#include "gpu/dispatch.h"
#include "gpu/kernel_common.cuh"
#include "gpu/kernels.h"
#include "gpu/packing.h"
#include "gpu/validate.h"

namespace kvsim::gpu {
namespace {

using std::int64_t;

using detail::block_allreduce;
using detail::ceil_div;
using detail::dequant_dev;
using detail::half_bits_to_float_dev;
using detail::kFullMask;
using detail::kWarpSize;
using detail::MaxOp;
using detail::SumOp;

constexpr int kTileElems = 2048;      // tokens per tile = kTileElems / HEAD_DIM (8 KiB per array)
constexpr int kTokensPerIter = 4;     // tokens a warp has in flight at once
constexpr int kMaxHeadsPerBlock = 8;  // query heads served by one block
constexpr int kMinWarpsPerBlock = 4;  // fewer heads -> several warps per head
constexpr int kMaxThreads =
    kMaxHeadsPerBlock * kWarpSize;  // 8 heads x 1 warp, or 4 x 1, 2 x 2, ...
// Splits: enough blocks for ~8 per SM (many loads in flight: the kernel is bandwidth-bound),
// but no split shorter than 256 tokens, so that the per-warp partials (2 * head_dim floats per
// query head and warp) stay a few percent of the cache bytes a split reads.
constexpr int64_t kMinTokensPerSplit = 256;
constexpr int kMaxSplits = 256;
constexpr int kMaxParts = kMaxSplits * kMinWarpsPerBlock;  // partials per query head
constexpr int kTargetBlocksPerSm = 8;

static_assert(kMaxHeadsPerBlock * 1 * kWarpSize <= kMaxThreads);
static_assert(kMinWarpsPerBlock * kWarpSize <= kMaxThreads);

// Device pointers and sizes of one call, passed by value.
struct FusedParams {
  const float* q;                     // [Hq, d]
  const std::uint32_t* key_codes;     // [Hkv, key_blocks, d]
  const std::uint16_t* key_scale;     // [Hkv, key_groups, d]
  const std::uint16_t* key_min;       // [Hkv, key_groups, d]
  const std::uint32_t* value_codes;   // [Hkv, nq, value_wpr]
  const std::uint16_t* value_scale;   // [Hkv, nq, value_groups]
  const std::uint16_t* value_min;     // [Hkv, nq, value_groups]
  const std::uint16_t* key_residual;  // [Hkv, nr, d]
  const std::uint16_t* value_residual;
  const std::uint8_t* present;  // [Hkv, n] or nullptr
  int64_t n, nq, nr;
  int key_bits, key_cpw, key_group;
  int64_t key_blocks, key_groups;
  int value_bits, value_cpw, value_group, value_wpr, value_groups;
  float scale;
  int q_per_kv, heads_per_block, head_chunks, warps_per_head;
  int64_t tokens_per_split;
  int num_splits;
};

// Workspace of the per-warp partial states; part = (qh * num_splits + split) * wph + r.
struct Partials {
  double* sums;  // [parts, 4]: S, M, C, S^
  float* maxes;  // [parts, 2]: m_r, m_s
  float* acc;    // [parts, 2, HEAD_DIM]: exact, then compressed (unnormalised)
};

__device__ __forceinline__ float load_exact(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_exact(const std::uint16_t* p, int64_t i) {
  return half_bits_to_float_dev(p[i]);
}

// (kMaxThreads, 2): lets the head_dim 256 variant keep its accumulators in registers (84, no
// spills with CUDA 13.0 for sm_90) where the default budget of 64 registers spilled.
template <int HEAD_DIM, typename ExactT>
__global__ void __launch_bounds__(kMaxThreads, 2)
    fused_split_kernel(FusedParams p,
                       const ExactT* __restrict__ key_exact,    // [Hkv, n, HEAD_DIM]
                       const ExactT* __restrict__ value_exact,  // [Hkv, n, HEAD_DIM]
                       Partials part) {
  static_assert(HEAD_DIM % kWarpSize == 0, "head_dim must be a multiple of the warp size");
  constexpr int kTile = kTileElems / HEAD_DIM;
  constexpr int kPerLane = HEAD_DIM / kWarpSize;
  static_assert(kTile <= kMinWarpsPerBlock * kWarpSize, "one pass fills the per-token tables");

  __shared__ float s_kex[kTile * HEAD_DIM];
  __shared__ float s_vex[kTile * HEAD_DIM];
  __shared__ float s_khat[kTile * HEAD_DIM];
  __shared__ float s_vhat[kTile * HEAD_DIM];
  __shared__ int s_present[kTile];
  __shared__ int64_t s_kword[kTile];   // first key word of the token's block, or -1 (residual)
  __shared__ int s_kshift[kTile];      // bit offset of the token in its key words
  __shared__ int64_t s_kgroup[kTile];  // first key scale/min of the token's group
  __shared__ int64_t s_vrow[kTile];    // value row (kvh * nq + t) or residual row
  __shared__ int s_vword[HEAD_DIM];    // per channel: word, shift and group in a value row
  __shared__ int s_vshift[HEAD_DIM];
  __shared__ int s_vgroup[HEAD_DIM];

  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const int warp = tid / kWarpSize;
  const int lane = tid % kWarpSize;
  const int64_t kvh = blockIdx.x / p.head_chunks;
  const int chunk = static_cast<int>(blockIdx.x % p.head_chunks);
  const int split = blockIdx.y;
  const int wph = p.warps_per_head;
  const int head_in_block = warp / wph;
  const int slice = warp % wph;
  const int head_in_group = chunk * p.heads_per_block + head_in_block;
  const bool active = head_in_group < p.q_per_kv;  // the last chunk may be partial
  const int64_t qh = kvh * p.q_per_kv + head_in_group;

  const int64_t begin = static_cast<int64_t>(split) * p.tokens_per_split;
  const int64_t end = begin + p.tokens_per_split < p.n ? begin + p.tokens_per_split : p.n;
  const std::uint32_t key_mask = code_mask(p.key_bits);
  const std::uint32_t value_mask = code_mask(p.value_bits);

  for (int c = tid; c < HEAD_DIM; c += nthreads) {
    s_vword[c] = c / p.value_cpw;
    s_vshift[c] = (c % p.value_cpw) * p.value_bits;
    s_vgroup[c] = c / p.value_group;
  }

  float qr[kPerLane];
  float acc[kPerLane];      // sum e^(raw - m_r) v, this lane's dimensions
  float acc_hat[kPerLane];  // sum_present e^(s - m_s) v^
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    qr[j] = active ? p.q[qh * HEAD_DIM + lane + j * kWarpSize] : 0.0f;
    acc[j] = 0.0f;
    acc_hat[j] = 0.0f;
  }
  float m_r = -INFINITY;  // running maxima (exact scores, present compressed scores)
  float m_s = -INFINITY;
  double sum = 0.0, mass = 0.0, cross = 0.0, sum_hat = 0.0;

  for (int64_t tile0 = begin; tile0 < end; tile0 += kTile) {
    const int cnt = static_cast<int>(end - tile0 < kTile ? end - tile0 : kTile);
    if (tid < cnt) {
      const int64_t t = tile0 + tid;
      s_present[tid] = p.present == nullptr || p.present[kvh * p.n + t] != 0;
      if (t < p.nq) {
        const int64_t b = t / p.key_cpw;
        s_kword[tid] = (kvh * p.key_blocks + b) * HEAD_DIM;
        s_kshift[tid] = static_cast<int>(t - b * p.key_cpw) * p.key_bits;
        s_kgroup[tid] = (kvh * p.key_groups + t / p.key_group) * HEAD_DIM;
        s_vrow[tid] = kvh * p.nq + t;
      } else {
        s_kword[tid] = -1;
        s_vrow[tid] = kvh * p.nr + (t - p.nq);
      }
    }
    __syncthreads();  // tables (and, on the first tile, the per-channel tables)

#pragma unroll 4
    for (int e = tid; e < cnt * HEAD_DIM; e += nthreads) {
      const int i = e / HEAD_DIM;
      const int c = e % HEAD_DIM;
      const int64_t ex = (kvh * p.n + tile0 + i) * HEAD_DIM + c;
      s_kex[e] = load_exact(key_exact, ex);
      s_vex[e] = load_exact(value_exact, ex);
      const int64_t kword = s_kword[i];
      if (kword >= 0) {
        const std::uint32_t kcode = (p.key_codes[kword + c] >> s_kshift[i]) & key_mask;
        const int64_t kg = s_kgroup[i] + c;
        s_khat[e] = dequant_dev(kcode, p.key_scale[kg], p.key_min[kg]);
        const int64_t vrow = s_vrow[i];
        const std::uint32_t vcode =
            (p.value_codes[vrow * p.value_wpr + s_vword[c]] >> s_vshift[c]) & value_mask;
        const int64_t vg = vrow * p.value_groups + s_vgroup[c];
        s_vhat[e] = dequant_dev(vcode, p.value_scale[vg], p.value_min[vg]);
      } else {
        const int64_t at = s_vrow[i] * HEAD_DIM + c;
        s_khat[e] = half_bits_to_float_dev(p.key_residual[at]);
        s_vhat[e] = half_bits_to_float_dev(p.value_residual[at]);
      }
    }
    __syncthreads();

    // Loop bounds depend only on the tile and the warp: no divergence around the shuffles.
    if (active) {
      for (int i0 = slice; i0 < cnt; i0 += wph * kTokensPerIter) {
        float raw[kTokensPerIter];
        float s[kTokensPerIter];
#pragma unroll
        for (int u = 0; u < kTokensPerIter; ++u) {
          raw[u] = 0.0f;
          s[u] = 0.0f;
          const int i = i0 + u * wph;
          if (i < cnt) {
#pragma unroll
            for (int j = 0; j < kPerLane; ++j) {
              const int at = i * HEAD_DIM + lane + j * kWarpSize;
              raw[u] = fmaf(qr[j], s_kex[at], raw[u]);
              s[u] = fmaf(qr[j], s_khat[at], s[u]);
            }
          }
        }
#pragma unroll
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
#pragma unroll
          for (int u = 0; u < kTokensPerIter; ++u) {
            raw[u] += __shfl_xor_sync(kFullMask, raw[u], offset);
            s[u] += __shfl_xor_sync(kFullMask, s[u], offset);
          }
        }

        float new_m_r = m_r;
        float new_m_s = m_s;
#pragma unroll
        for (int u = 0; u < kTokensPerIter; ++u) {
          const int i = i0 + u * wph;
          if (i < cnt) {
            raw[u] *= p.scale;
            s[u] *= p.scale;
            new_m_r = fmaxf(new_m_r, raw[u]);
            if (s_present[i]) new_m_s = fmaxf(new_m_s, s[u]);
          }
        }
        // new_m_r is finite (token i0 is valid); m = -inf before the first token gives 0.
        const float corr_r = expf(m_r - new_m_r);
        const float corr_s = new_m_s == -INFINITY ? 1.0f : expf(m_s - new_m_s);
        sum *= corr_r;
        mass *= corr_r;
        cross *= corr_r;
        sum_hat *= corr_s;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          acc[j] *= corr_r;
          acc_hat[j] *= corr_s;
        }
#pragma unroll
        for (int u = 0; u < kTokensPerIter; ++u) {
          const int i = i0 + u * wph;
          if (i >= cnt) continue;
          const float e_r = expf(raw[u] - new_m_r);
          sum += e_r;
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            acc[j] = fmaf(e_r, s_vex[i * HEAD_DIM + lane + j * kWarpSize], acc[j]);
          }
          if (!s_present[i]) continue;
          mass += e_r;
          cross +=
              static_cast<double>(e_r) * (static_cast<double>(raw[u]) - static_cast<double>(s[u]));
          const float e_s = expf(s[u] - new_m_s);
          sum_hat += e_s;
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            acc_hat[j] = fmaf(e_s, s_vhat[i * HEAD_DIM + lane + j * kWarpSize], acc_hat[j]);
          }
        }
        m_r = new_m_r;
        m_s = new_m_s;
      }
    }
    __syncthreads();  // the tile is overwritten next
  }

  if (!active) return;
  const int64_t pi = (qh * p.num_splits + split) * wph + slice;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    part.acc[(pi * 2) * HEAD_DIM + lane + j * kWarpSize] = acc[j];
    part.acc[(pi * 2 + 1) * HEAD_DIM + lane + j * kWarpSize] = acc_hat[j];
  }
  if (lane == 0) {
    part.maxes[pi * 2] = m_r;
    part.maxes[pi * 2 + 1] = m_s;
    part.sums[pi * 4] = sum;
    part.sums[pi * 4 + 1] = mass;
    part.sums[pi * 4 + 2] = cross;
    part.sums[pi * 4 + 3] = sum_hat;
  }
}

struct FusedOutputs {
  float* out_hat;        // [Hq, HEAD_DIM]
  float* lse_hat;        // [Hq]
  float* out;            // [Hq, HEAD_DIM]
  float* lse;            // [Hq]
  float* rel_err;        // [Hq]
  float* cosine;         // [Hq]
  float* kl;             // [Hq]
  float* mass_retained;  // [Hq]
};

template <int HEAD_DIM>
__global__ void __launch_bounds__(HEAD_DIM)
    fused_combine_kernel(Partials part, int parts_per_head, FusedOutputs o) {
  constexpr int kWarps = HEAD_DIM / kWarpSize;
  __shared__ float s_wr[kMaxParts];  // weights of the exact partials
  __shared__ float s_ws[kMaxParts];  // weights of the compressed partials
  __shared__ float s_fscratch[kWarps];
  __shared__ double s_dscratch[kWarps];

  const int64_t qh = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t base = qh * parts_per_head;

  float local_r = -INFINITY;
  float local_s = -INFINITY;
  for (int k = tid; k < parts_per_head; k += HEAD_DIM) {
    local_r = fmaxf(local_r, part.maxes[(base + k) * 2]);
    local_s = fmaxf(local_s, part.maxes[(base + k) * 2 + 1]);
  }
  const float m_r = block_allreduce<kWarps>(local_r, s_fscratch, MaxOp{});
  const float m_s = block_allreduce<kWarps>(local_s, s_fscratch, MaxOp{});
  const bool any_present = m_s != -INFINITY;

  double sum = 0.0, mass = 0.0, cross = 0.0, sum_hat = 0.0;
  for (int k = tid; k < parts_per_head; k += HEAD_DIM) {
    const float mr_k = part.maxes[(base + k) * 2];
    const float ms_k = part.maxes[(base + k) * 2 + 1];
    const float wr = mr_k == -INFINITY ? 0.0f : expf(mr_k - m_r);
    const float ws = ms_k == -INFINITY ? 0.0f : expf(ms_k - m_s);
    s_wr[k] = wr;
    s_ws[k] = ws;
    const double* sums = part.sums + (base + k) * 4;
    sum += sums[0] * wr;
    mass += sums[1] * wr;
    cross += sums[2] * wr;
    sum_hat += sums[3] * ws;
  }
  // The reductions' __syncthreads() also publish s_wr and s_ws.
  sum = block_allreduce<kWarps>(sum, s_dscratch, SumOp{});
  mass = block_allreduce<kWarps>(mass, s_dscratch, SumOp{});
  cross = block_allreduce<kWarps>(cross, s_dscratch, SumOp{});
  sum_hat = block_allreduce<kWarps>(sum_hat, s_dscratch, SumOp{});

  float a = 0.0f;
  float a_hat = 0.0f;
  for (int k = 0; k < parts_per_head; ++k) {
    const float* acc = part.acc + (base + k) * 2 * HEAD_DIM + tid;
    a = fmaf(acc[0], s_wr[k], a);
    a_hat = fmaf(acc[HEAD_DIM], s_ws[k], a_hat);
  }
  const auto value = static_cast<float>(static_cast<double>(a) / sum);
  const float value_hat =
      any_present ? static_cast<float>(static_cast<double>(a_hat) / sum_hat) : 0.0f;
  o.out[qh * HEAD_DIM + tid] = value;
  o.out_hat[qh * HEAD_DIM + tid] = value_hat;

  // The engine's metrics, from the float outputs, in double.
  const double ov = value;
  const double hv = value_hat;
  const double diff = block_allreduce<kWarps>((hv - ov) * (hv - ov), s_dscratch, SumOp{});
  const double on = block_allreduce<kWarps>(ov * ov, s_dscratch, SumOp{});
  const double ohn = block_allreduce<kWarps>(hv * hv, s_dscratch, SumOp{});
  const double dot = block_allreduce<kWarps>(hv * ov, s_dscratch, SumOp{});
  if (tid == 0) {
    o.lse[qh] = static_cast<float>(static_cast<double>(m_r) + log(sum));
    o.lse_hat[qh] =
        any_present ? static_cast<float>(static_cast<double>(m_s) + log(sum_hat)) : -INFINITY;
    o.mass_retained[qh] = static_cast<float>(fmin(mass / sum, 1.0));
    double kl = 0.0;
    if (any_present && mass > 0.0) {
      kl = cross / mass + log(sum_hat / mass) +
           (static_cast<double>(m_s) - static_cast<double>(m_r));
    }
    o.kl[qh] = static_cast<float>(fmax(kl, 0.0));
    o.rel_err[qh] = static_cast<float>(on > 0 ? sqrt(diff / on) : sqrt(diff));
    o.cosine[qh] = static_cast<float>(on > 0 && ohn > 0 ? dot / sqrt(on * ohn) : 0.0);
  }
}

}  // namespace

void fused_replay_attention(const FusedReplayArgs& a) {
  constexpr const char* kWhat = "gpu::fused_replay_attention";
  detail::validate_fused_replay(kWhat, a);
  require_cuda();
  const std::initializer_list<std::pair<const void*, const char*>> pointers = {
      {a.q, "q"},
      {a.key_codes, "key_codes"},
      {a.key_scale, "key_scale"},
      {a.key_min, "key_min"},
      {a.value_codes, "value_codes"},
      {a.value_scale, "value_scale"},
      {a.value_min, "value_min"},
      {a.key_residual, "key_residual"},
      {a.value_residual, "value_residual"},
      {a.key_exact_f32, "key_exact_f32"},
      {a.value_exact_f32, "value_exact_f32"},
      {a.key_exact_f16, "key_exact_f16"},
      {a.value_exact_f16, "value_exact_f16"},
      {a.present, "present"},
      {a.out_hat, "out_hat"},
      {a.lse_hat, "lse_hat"},
      {a.out, "out"},
      {a.lse, "lse"},
      {a.rel_err, "rel_err"},
      {a.cosine, "cosine"},
      {a.kl, "kl"},
      {a.mass_retained, "mass_retained"}};
  detail::check_device_pointers(kWhat, pointers);

  FusedParams p{};
  p.q = a.q;
  p.key_codes = a.key_codes;
  p.key_scale = a.key_scale;
  p.key_min = a.key_min;
  p.value_codes = a.value_codes;
  p.value_scale = a.value_scale;
  p.value_min = a.value_min;
  p.key_residual = a.key_residual;
  p.value_residual = a.value_residual;
  p.present = a.present;
  p.n = a.num_tokens();
  p.nq = a.num_quant_tokens;
  p.nr = a.num_residual_tokens;
  p.key_bits = a.key_bits;
  p.key_cpw = codes_per_word(a.key_bits);
  p.key_group = a.key_group;
  p.key_blocks = words_per_row(p.nq, a.key_bits);
  p.key_groups = num_groups_of(p.nq, a.key_group);
  p.value_bits = a.value_bits;
  p.value_cpw = codes_per_word(a.value_bits);
  p.value_group = a.value_group;
  p.value_wpr = static_cast<int>(words_per_row(a.head_dim, a.value_bits));
  p.value_groups = static_cast<int>(num_groups_of(a.head_dim, a.value_group));
  p.scale = a.scale;
  p.q_per_kv = a.num_q_heads / a.num_kv_heads;
  p.heads_per_block = std::min(p.q_per_kv, kMaxHeadsPerBlock);
  p.head_chunks = static_cast<int>(ceil_div(p.q_per_kv, p.heads_per_block));
  p.warps_per_head = static_cast<int>(ceil_div(kMinWarpsPerBlock, p.heads_per_block));
  const int threads = kWarpSize * p.heads_per_block * p.warps_per_head;

  // Enough blocks to fill the GPU, no split shorter than kMinTokensPerSplit; the chunk length
  // is fixed first and the split count derived from it, so that no split is empty.
  const int64_t blocks_per_split = static_cast<int64_t>(a.num_kv_heads) * p.head_chunks;
  const int64_t target =
      static_cast<int64_t>(kTargetBlocksPerSm) * detail::current_device_sm_count();
  int64_t splits = ceil_div(target, blocks_per_split);
  splits = std::min(splits, ceil_div(p.n, kMinTokensPerSplit));
  splits = std::clamp<int64_t>(splits, 1, kMaxSplits);
  p.tokens_per_split = ceil_div(p.n, splits);
  splits = ceil_div(p.n, p.tokens_per_split);
  p.num_splits = static_cast<int>(splits);
  if (blocks_per_split > 0x7FFFFFFF) {
    throw ConfigError(std::string(kWhat) + ": too many kv heads for one grid");
  }

  const int parts_per_head = p.num_splits * p.warps_per_head;
  const auto parts = static_cast<std::size_t>(a.num_q_heads) * parts_per_head;
  const auto acc_floats = parts * 2 * static_cast<std::size_t>(a.head_dim);
  detail::StreamScratch scratch(parts * 4 * sizeof(double) + parts * 2 * sizeof(float) +
                                acc_floats * sizeof(float));
  Partials part{};
  part.sums = scratch.as<double>();
  part.maxes = reinterpret_cast<float*>(part.sums + parts * 4);
  part.acc = part.maxes + parts * 2;
  const FusedOutputs outputs{a.out_hat, a.lse_hat, a.out, a.lse,
                             a.rel_err, a.cosine,  a.kl,  a.mass_retained};

  const dim3 grid(static_cast<unsigned>(blocks_per_split), static_cast<unsigned>(splits));
  KVSIM_DISPATCH_HEAD_DIM(a.head_dim, kHeadDim, [&] {
    if (a.exact_is_f16()) {
      fused_split_kernel<kHeadDim, std::uint16_t>
          <<<grid, threads>>>(p, a.key_exact_f16, a.value_exact_f16, part);
    } else {
      fused_split_kernel<kHeadDim, float>
          <<<grid, threads>>>(p, a.key_exact_f32, a.value_exact_f32, part);
    }
    KVSIM_CUDA_CHECK_LAUNCH("fused_split_kernel");
    fused_combine_kernel<kHeadDim>
        <<<static_cast<unsigned>(a.num_q_heads), kHeadDim>>>(part, parts_per_head, outputs);
    KVSIM_CUDA_CHECK_LAUNCH("fused_combine_kernel");
  });
}

}  // namespace kvsim::gpu
