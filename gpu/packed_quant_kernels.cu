// GPU fp16 conversion, code packing, KIVI and SKVQ quantization (contracts in
// kernel_declarations.inc, launch shapes in kernels.h).
//
// Bit-exactness with the CPU references: min/max are exact and -0 is canonicalised to +0 (x + 0),
// every arithmetic step is an explicitly rounded intrinsic (__fadd_rn, __fsub_rn, __fmul_rn,
// __fdiv_rn) that nvcc never contracts or approximates, in the reference's order; fp16 values
// are rounded with __float2half_rn and codes with rintf, both to nearest even like the host.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include "gpu/cuda_check.cuh"
#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/kernel_common.cuh"
#include "gpu/kernels.h"
#include "gpu/packing.h"
#include "gpu/validate.h"

namespace kvsim::gpu {
namespace {

using std::int64_t;

using detail::check_device_pointers;
using detail::dequant_dev;
using detail::float_to_half_bits_dev;
using detail::grid_for;
using detail::half_bits_to_float_dev;
using detail::kFullMask;
using detail::kWarpSize;

constexpr int kThreads = 256;
constexpr int kSkvqThreads = 128;

// The group parameters of the min/max rule, from the exact min and max of the group.
__device__ __forceinline__ void rtn_params_dev(float mn, float mx, float levels,
                                               std::uint16_t* scale_bits, std::uint16_t* min_bits) {
  mn = __fadd_rn(mn, 0.0f);  // -0 -> +0, as on the host
  mx = __fadd_rn(mx, 0.0f);
  *scale_bits = float_to_half_bits_dev(__fdiv_rn(__fsub_rn(mx, mn), levels));
  *min_bits = float_to_half_bits_dev(mn);
}

__device__ __forceinline__ std::uint32_t rtn_code_dev(float x, float mn16, float scale16,
                                                      float levels) {
  if (scale16 == 0.0f) return 0u;
  const float t = __fdiv_rn(__fsub_rn(x, mn16), scale16);
  return static_cast<std::uint32_t>(rintf(fminf(fmaxf(t, 0.0f), levels)));
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// --- conversion and packing ------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    convert_half_kernel(const float* __restrict__ x,  // [count]
                        int64_t count,
                        std::uint16_t* __restrict__ out) {  // [count]
  for (int64_t i = global_thread(); i < count; i += grid_threads()) {
    out[i] = float_to_half_bits_dev(x[i]);
  }
}

__global__ void __launch_bounds__(kThreads)
    pack_kernel(const std::uint8_t* __restrict__ codes,  // [num_rows, row_len]
                int64_t num_rows, int64_t row_len, int bits, int64_t wpr,
                std::uint32_t* __restrict__ words) {  // [num_rows, wpr]
  const int cpw = codes_per_word(bits);
  const std::uint32_t mask = code_mask(bits);
  const int64_t total = num_rows * wpr;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t r = idx / wpr;
    const int64_t first = (idx - r * wpr) * cpw;
    const std::uint8_t* row = codes + r * row_len;
    std::uint32_t word = 0;
    for (int s = 0; s < cpw && first + s < row_len; ++s) {
      word |= (static_cast<std::uint32_t>(row[first + s]) & mask) << (s * bits);
    }
    words[idx] = word;
  }
}

__global__ void __launch_bounds__(kThreads)
    unpack_kernel(const std::uint32_t* __restrict__ words,  // [num_rows, wpr]
                  int64_t num_rows, int64_t row_len, int bits, int64_t wpr,
                  std::uint8_t* __restrict__ codes) {  // [num_rows, row_len]
  const int cpw = codes_per_word(bits);
  const int64_t total = num_rows * wpr;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t r = idx / wpr;
    const int64_t first = (idx - r * wpr) * cpw;
    const std::uint32_t word = words[idx];
    std::uint8_t* row = codes + r * row_len;
    for (int s = 0; s < cpw && first + s < row_len; ++s) {
      row[first + s] = static_cast<std::uint8_t>(extract_code(word, s, bits));
    }
  }
}

// --- KIVI keys: groups of G tokens per channel, codes packed along tokens -------------------

// One thread per (head, group, channel); neighbouring threads read neighbouring channels.
__global__ void __launch_bounds__(kThreads)
    kivi_key_params_kernel(const float* __restrict__ k,  // [num_heads, n, d]
                           int num_heads, int64_t n, int d, int group_size, int64_t groups,
                           float levels,
                           std::uint16_t* __restrict__ scale,   // [num_heads, groups, d]
                           std::uint16_t* __restrict__ minv) {  // [num_heads, groups, d]
  const int64_t total = static_cast<int64_t>(num_heads) * groups * d;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t c = idx % d;
    const int64_t hg = idx / d;
    const int64_t g = hg % groups;
    const int64_t h = hg / groups;
    const int64_t t0 = g * group_size;
    const int64_t count = n - t0 < group_size ? n - t0 : group_size;
    const float* x = k + (h * n + t0) * d + c;
    float mn = x[0];
    float mx = x[0];
    for (int64_t i = 1; i < count; ++i) {
      const float v = x[i * d];
      mn = fminf(mn, v);
      mx = fmaxf(mx, v);
    }
    rtn_params_dev(mn, mx, levels, &scale[idx], &minv[idx]);
  }
}

// One thread per output word (head, token block, channel).
__global__ void __launch_bounds__(kThreads)
    kivi_key_pack_kernel(const float* __restrict__ k,  // [num_heads, n, d]
                         int num_heads, int64_t n, int d, int group_size, int64_t groups, int bits,
                         int64_t blocks, float levels,
                         const std::uint16_t* __restrict__ scale,  // [num_heads, groups, d]
                         const std::uint16_t* __restrict__ minv,   // [num_heads, groups, d]
                         std::uint32_t* __restrict__ codes) {      // [num_heads, blocks, d]
  const int cpw = codes_per_word(bits);
  const int64_t total = static_cast<int64_t>(num_heads) * blocks * d;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t c = idx % d;
    const int64_t hb = idx / d;
    const int64_t b = hb % blocks;
    const int64_t h = hb / blocks;
    std::uint32_t word = 0;
    for (int s = 0; s < cpw; ++s) {
      const int64_t t = b * cpw + s;
      if (t >= n) break;
      const int64_t at = (h * groups + t / group_size) * d + c;
      const std::uint32_t code =
          rtn_code_dev(k[(h * n + t) * d + c], half_bits_to_float_dev(minv[at]),
                       half_bits_to_float_dev(scale[at]), levels);
      word |= code << (s * bits);
    }
    codes[idx] = word;
  }
}

__global__ void __launch_bounds__(kThreads)
    kivi_key_dequant_kernel(const std::uint32_t* __restrict__ codes,  // [num_heads, blocks, d]
                            const std::uint16_t* __restrict__ scale,  // [num_heads, groups, d]
                            const std::uint16_t* __restrict__ minv,   // [num_heads, groups, d]
                            int num_heads, int64_t n, int d, int group_size, int64_t groups,
                            int bits, int64_t blocks,
                            float* __restrict__ k_hat) {  // [num_heads, n, d]
  const int cpw = codes_per_word(bits);
  const int64_t total = static_cast<int64_t>(num_heads) * blocks * d;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t c = idx % d;
    const int64_t hb = idx / d;
    const int64_t b = hb % blocks;
    const int64_t h = hb / blocks;
    const std::uint32_t word = codes[idx];
    for (int s = 0; s < cpw; ++s) {
      const int64_t t = b * cpw + s;
      if (t >= n) break;
      const int64_t at = (h * groups + t / group_size) * d + c;
      k_hat[(h * n + t) * d + c] = dequant_dev(extract_code(word, s, bits), scale[at], minv[at]);
    }
  }
}

// --- KIVI values: groups of G channels per token, one packed row per token ------------------

// One thread per (row, group).
__global__ void __launch_bounds__(kThreads)
    kivi_value_params_kernel(const float* __restrict__ v,  // [rows, d]
                             int64_t rows, int d, int group_size, int64_t groups, float levels,
                             std::uint16_t* __restrict__ scale,   // [rows, groups]
                             std::uint16_t* __restrict__ minv) {  // [rows, groups]
  const int64_t total = rows * groups;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t r = idx / groups;
    const int64_t c0 = (idx - r * groups) * group_size;
    const int64_t count = d - c0 < group_size ? d - c0 : group_size;
    const float* x = v + r * d + c0;
    float mn = x[0];
    float mx = x[0];
    for (int64_t i = 1; i < count; ++i) {
      mn = fminf(mn, x[i]);
      mx = fmaxf(mx, x[i]);
    }
    rtn_params_dev(mn, mx, levels, &scale[idx], &minv[idx]);
  }
}

// One thread per output word (row, word).
__global__ void __launch_bounds__(kThreads)
    kivi_value_pack_kernel(const float* __restrict__ v,  // [rows, d]
                           int64_t rows, int d, int group_size, int64_t groups, int bits,
                           int64_t wpr, float levels,
                           const std::uint16_t* __restrict__ scale,  // [rows, groups]
                           const std::uint16_t* __restrict__ minv,   // [rows, groups]
                           std::uint32_t* __restrict__ codes) {      // [rows, wpr]
  const int cpw = codes_per_word(bits);
  const int64_t total = rows * wpr;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t r = idx / wpr;
    const int64_t first = (idx - r * wpr) * cpw;
    std::uint32_t word = 0;
    for (int s = 0; s < cpw; ++s) {
      const int64_t c = first + s;
      if (c >= d) break;
      const int64_t at = r * groups + c / group_size;
      word |= rtn_code_dev(v[r * d + c], half_bits_to_float_dev(minv[at]),
                           half_bits_to_float_dev(scale[at]), levels)
              << (s * bits);
    }
    codes[idx] = word;
  }
}

__global__ void __launch_bounds__(kThreads)
    kivi_value_dequant_kernel(const std::uint32_t* __restrict__ codes,  // [rows, wpr]
                              const std::uint16_t* __restrict__ scale,  // [rows, groups]
                              const std::uint16_t* __restrict__ minv,   // [rows, groups]
                              int64_t rows, int d, int group_size, int64_t groups, int bits,
                              int64_t wpr,
                              float* __restrict__ v_hat) {  // [rows, d]
  const int cpw = codes_per_word(bits);
  const int64_t total = rows * wpr;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t r = idx / wpr;
    const int64_t first = (idx - r * wpr) * cpw;
    const std::uint32_t word = codes[idx];
    for (int s = 0; s < cpw; ++s) {
      const int64_t c = first + s;
      if (c >= d) break;
      const int64_t at = r * groups + c / group_size;
      v_hat[r * d + c] = dequant_dev(extract_code(word, s, bits), scale[at], minv[at]);
    }
  }
}

// --- SKVQ -------------------------------------------------------------------------------------

// Shared memory of the SKVQ kernels, carved from one dynamic allocation.
struct SkvqShared {
  float* y;                   // [C] the permuted row
  std::uint16_t* slot_group;  // [C] group of each permuted slot
  std::uint16_t* scale16;     // [G]
  std::uint16_t* zero16;      // [G]
};

__device__ SkvqShared carve_skvq_shared(void* base, int C, int G) {
  SkvqShared s;
  s.y = static_cast<float*>(base);
  s.slot_group = reinterpret_cast<std::uint16_t*>(s.y + C);
  s.scale16 = s.slot_group + C;
  s.zero16 = s.scale16 + G;
  return s;
}

std::size_t skvq_shared_bytes(int C, int G) {
  return static_cast<std::size_t>(C) * (sizeof(float) + sizeof(std::uint16_t)) +
         static_cast<std::size_t>(G) * 2 * sizeof(std::uint16_t);
}

// slot_group[j] = the g with group_starts[g] <= j < group_starts[g + 1] (binary search).
__device__ void fill_slot_groups(const std::int32_t* __restrict__ group_starts, int C, int G,
                                 std::uint16_t* slot_group) {
  for (int j = threadIdx.x; j < C; j += blockDim.x) {
    int lo = 0;
    int hi = G - 1;
    while (lo < hi) {  // last g with starts[g] <= j
      const int mid = (lo + hi + 1) / 2;
      if (group_starts[mid] <= j) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    slot_group[j] = static_cast<std::uint16_t>(lo);
  }
}

// One block per row (grid-stride over rows), kSkvqThreads threads.
__global__ void __launch_bounds__(kSkvqThreads)
    skvq_quantize_kernel(const float* __restrict__ x,  // [num_rows, C]
                         int64_t num_rows, int C,
                         const std::int32_t* __restrict__ perm,          // [C]
                         const std::int32_t* __restrict__ group_starts,  // [G + 1]
                         int G, float top, float clip,
                         const float* __restrict__ group_clip,  // [G] or nullptr
                         int bits, int64_t wpr,
                         std::uint32_t* __restrict__ codes,   // [num_rows, wpr]
                         std::uint16_t* __restrict__ scale,   // [num_rows, G]
                         std::uint16_t* __restrict__ zero) {  // [num_rows, G]
  extern __shared__ float skvq_smem[];
  const SkvqShared sh = carve_skvq_shared(skvq_smem, C, G);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  const int cpw = codes_per_word(bits);
  fill_slot_groups(group_starts, C, G, sh.slot_group);

  for (int64_t r = blockIdx.x; r < num_rows; r += gridDim.x) {
    for (int j = threadIdx.x; j < C; j += blockDim.x) sh.y[j] = x[r * C + perm[j]];
    __syncthreads();  // also publishes slot_group on the first row

    // One warp per group: exact min/max, then the clipped parameters (lane 0).
    for (int g = warp; g < G; g += num_warps) {
      const int begin = group_starts[g];
      const int end = group_starts[g + 1];
      float lo = INFINITY;
      float hi = -INFINITY;
      for (int j = begin + lane; j < end; j += kWarpSize) {
        lo = fminf(lo, sh.y[j]);
        hi = fmaxf(hi, sh.y[j]);
      }
#pragma unroll
      for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        lo = fminf(lo, __shfl_xor_sync(kFullMask, lo, offset));
        hi = fmaxf(hi, __shfl_xor_sync(kFullMask, hi, offset));
      }
      if (lane == 0) {
        const float a = group_clip != nullptr ? group_clip[g] : clip;
        const float gmin = __fadd_rn(__fmul_rn(a, __fadd_rn(lo, 0.0f)), 0.0f);
        const float gmax = __fadd_rn(__fmul_rn(a, __fadd_rn(hi, 0.0f)), 0.0f);
        const float range = __fdiv_rn(__fsub_rn(gmax, gmin), top);
        const std::uint16_t s_bits = float_to_half_bits_dev(fmaxf(range, 1e-5f));
        const std::uint16_t z_bits = float_to_half_bits_dev(gmin);
        sh.scale16[g] = s_bits;
        sh.zero16[g] = z_bits;
        scale[r * G + g] = s_bits;
        zero[r * G + g] = z_bits;
      }
    }
    __syncthreads();

    for (int64_t w = threadIdx.x; w < wpr; w += blockDim.x) {
      std::uint32_t word = 0;
      for (int s = 0; s < cpw; ++s) {
        const int64_t j = w * cpw + s;
        if (j >= C) break;
        const int g = sh.slot_group[j];
        word |= rtn_code_dev(sh.y[j], half_bits_to_float_dev(sh.zero16[g]),
                             half_bits_to_float_dev(sh.scale16[g]), top)
                << (s * bits);
      }
      codes[r * wpr + w] = word;
    }
    __syncthreads();  // y and the parameters are rewritten for the next row
  }
}

__global__ void __launch_bounds__(kSkvqThreads)
    skvq_dequantize_kernel(const std::uint32_t* __restrict__ codes,  // [num_rows, wpr]
                           const std::uint16_t* __restrict__ scale,  // [num_rows, G]
                           const std::uint16_t* __restrict__ zero,   // [num_rows, G]
                           int64_t num_rows, int C,
                           const std::int32_t* __restrict__ perm,          // [C]
                           const std::int32_t* __restrict__ group_starts,  // [G + 1]
                           int G, int bits, int64_t wpr,
                           float* __restrict__ x_hat) {  // [num_rows, C]
  extern __shared__ float skvq_smem[];
  const SkvqShared sh = carve_skvq_shared(skvq_smem, C, G);
  const int cpw = codes_per_word(bits);
  fill_slot_groups(group_starts, C, G, sh.slot_group);
  __syncthreads();
  for (int64_t r = blockIdx.x; r < num_rows; r += gridDim.x) {
    for (int64_t w = threadIdx.x; w < wpr; w += blockDim.x) {
      const std::uint32_t word = codes[r * wpr + w];
      for (int s = 0; s < cpw; ++s) {
        const int64_t j = w * cpw + s;
        if (j >= C) break;
        const int g = sh.slot_group[j];
        x_hat[r * C + perm[j]] =
            dequant_dev(extract_code(word, s, bits), scale[r * G + g], zero[r * G + g]);
      }
    }
  }
}

// --- launch helpers ---------------------------------------------------------------------------

// One block per row, at most 8 per SM (the kernels loop over rows).
unsigned skvq_grid(int64_t num_rows) {
  const int64_t cap = static_cast<int64_t>(detail::current_device_sm_count()) * 8;
  return static_cast<unsigned>(num_rows < cap ? num_rows : cap);
}

// The KIVI launchers' prologue: the reference's argument checks, the backend, then the device
// pointers (x is k, v, k_hat or v_hat). Returns false when there is no token to work on.
bool kivi_launch_ready(const char* what, const void* x, const char* x_name,
                       const std::uint32_t* codes, const std::uint16_t* scale,
                       const std::uint16_t* minv, int num_heads, std::int64_t num_tokens,
                       int head_dim, int group_size, int bits) {
  detail::validate_kivi(what, x, codes, scale, minv, num_heads, num_tokens, head_dim, group_size,
                        bits);
  require_cuda();
  if (num_tokens == 0) return false;
  check_device_pointers(what, {{x, x_name}, {codes, "codes"}, {scale, "scale"}, {minv, "minv"}});
  return true;
}

// Copies the SKVQ layout arrays to the host and checks them like the reference.
void check_skvq_layout(const char* what, const std::int32_t* perm, const std::int32_t* group_starts,
                       const float* group_clip, int C, int G) {
  std::vector<std::int32_t> h_perm(static_cast<std::size_t>(C));
  std::vector<std::int32_t> h_starts(static_cast<std::size_t>(G) + 1);
  std::vector<float> h_clip(group_clip != nullptr ? static_cast<std::size_t>(G) : 0);
  copy_device_to_host(h_perm.data(), perm, h_perm.size() * sizeof(std::int32_t));
  copy_device_to_host(h_starts.data(), group_starts, h_starts.size() * sizeof(std::int32_t));
  if (group_clip != nullptr) {
    copy_device_to_host(h_clip.data(), group_clip, h_clip.size() * sizeof(float));
  }
  detail::validate_skvq_layout(what, h_perm.data(), h_starts.data(),
                               group_clip != nullptr ? h_clip.data() : nullptr, C, G);
}

}  // namespace

// --- launchers ----------------------------------------------------------------------------------

void convert_float_to_half(const float* x, std::int64_t count, std::uint16_t* out) {
  constexpr const char* kWhat = "gpu::convert_float_to_half";
  detail::validate_convert_half(kWhat, x, count, out);
  require_cuda();
  if (count == 0) return;
  check_device_pointers(kWhat, {{x, "x"}, {out, "out"}});
  convert_half_kernel<<<grid_for(count, kThreads, 16), kThreads>>>(x, count, out);
  KVSIM_CUDA_CHECK_LAUNCH("convert_half_kernel");
}

void pack_codes(const std::uint8_t* codes, std::int64_t num_rows, std::int64_t row_len, int bits,
                std::uint32_t* words) {
  constexpr const char* kWhat = "gpu::pack_codes";
  detail::validate_pack(kWhat, codes, words, num_rows, row_len, bits);
  require_cuda();
  if (num_rows == 0 || row_len == 0) return;
  check_device_pointers(kWhat, {{codes, "codes"}, {words, "words"}});
  const int64_t wpr = words_per_row(row_len, bits);
  pack_kernel<<<grid_for(num_rows * wpr, kThreads, 16), kThreads>>>(codes, num_rows, row_len, bits,
                                                                    wpr, words);
  KVSIM_CUDA_CHECK_LAUNCH("pack_kernel");
}

void unpack_codes(const std::uint32_t* words, std::int64_t num_rows, std::int64_t row_len, int bits,
                  std::uint8_t* codes) {
  constexpr const char* kWhat = "gpu::unpack_codes";
  detail::validate_pack(kWhat, codes, words, num_rows, row_len, bits);
  require_cuda();
  if (num_rows == 0 || row_len == 0) return;
  check_device_pointers(kWhat, {{codes, "codes"}, {words, "words"}});
  const int64_t wpr = words_per_row(row_len, bits);
  unpack_kernel<<<grid_for(num_rows * wpr, kThreads, 16), kThreads>>>(words, num_rows, row_len,
                                                                      bits, wpr, codes);
  KVSIM_CUDA_CHECK_LAUNCH("unpack_kernel");
}

void kivi_quantize_keys(const float* k, int num_heads, std::int64_t num_tokens, int head_dim,
                        int group_size, int bits, std::uint32_t* codes, std::uint16_t* scale,
                        std::uint16_t* minv) {
  if (!kivi_launch_ready("gpu::kivi_quantize_keys", k, "k", codes, scale, minv, num_heads,
                         num_tokens, head_dim, group_size, bits)) {
    return;
  }
  const int64_t groups = num_groups_of(num_tokens, group_size);
  const int64_t blocks = words_per_row(num_tokens, bits);
  const auto levels = static_cast<float>((1 << bits) - 1);
  kivi_key_params_kernel<<<grid_for(num_heads * groups * head_dim, kThreads, 16), kThreads>>>(
      k, num_heads, num_tokens, head_dim, group_size, groups, levels, scale, minv);
  KVSIM_CUDA_CHECK_LAUNCH("kivi_key_params_kernel");
  kivi_key_pack_kernel<<<grid_for(num_heads * blocks * head_dim, kThreads, 16), kThreads>>>(
      k, num_heads, num_tokens, head_dim, group_size, groups, bits, blocks, levels, scale, minv,
      codes);
  KVSIM_CUDA_CHECK_LAUNCH("kivi_key_pack_kernel");
}

void kivi_dequantize_keys(const std::uint32_t* codes, const std::uint16_t* scale,
                          const std::uint16_t* minv, int num_heads, std::int64_t num_tokens,
                          int head_dim, int group_size, int bits, float* k_hat) {
  if (!kivi_launch_ready("gpu::kivi_dequantize_keys", k_hat, "k_hat", codes, scale, minv, num_heads,
                         num_tokens, head_dim, group_size, bits)) {
    return;
  }
  const int64_t groups = num_groups_of(num_tokens, group_size);
  const int64_t blocks = words_per_row(num_tokens, bits);
  kivi_key_dequant_kernel<<<grid_for(num_heads * blocks * head_dim, kThreads, 16), kThreads>>>(
      codes, scale, minv, num_heads, num_tokens, head_dim, group_size, groups, bits, blocks, k_hat);
  KVSIM_CUDA_CHECK_LAUNCH("kivi_key_dequant_kernel");
}

void kivi_quantize_values(const float* v, int num_heads, std::int64_t num_tokens, int head_dim,
                          int group_size, int bits, std::uint32_t* codes, std::uint16_t* scale,
                          std::uint16_t* minv) {
  if (!kivi_launch_ready("gpu::kivi_quantize_values", v, "v", codes, scale, minv, num_heads,
                         num_tokens, head_dim, group_size, bits)) {
    return;
  }
  const int64_t rows = static_cast<int64_t>(num_heads) * num_tokens;
  const int64_t groups = num_groups_of(head_dim, group_size);
  const int64_t wpr = words_per_row(head_dim, bits);
  const auto levels = static_cast<float>((1 << bits) - 1);
  kivi_value_params_kernel<<<grid_for(rows * groups, kThreads, 16), kThreads>>>(
      v, rows, head_dim, group_size, groups, levels, scale, minv);
  KVSIM_CUDA_CHECK_LAUNCH("kivi_value_params_kernel");
  kivi_value_pack_kernel<<<grid_for(rows * wpr, kThreads, 16), kThreads>>>(
      v, rows, head_dim, group_size, groups, bits, wpr, levels, scale, minv, codes);
  KVSIM_CUDA_CHECK_LAUNCH("kivi_value_pack_kernel");
}

void kivi_dequantize_values(const std::uint32_t* codes, const std::uint16_t* scale,
                            const std::uint16_t* minv, int num_heads, std::int64_t num_tokens,
                            int head_dim, int group_size, int bits, float* v_hat) {
  if (!kivi_launch_ready("gpu::kivi_dequantize_values", v_hat, "v_hat", codes, scale, minv,
                         num_heads, num_tokens, head_dim, group_size, bits)) {
    return;
  }
  const int64_t rows = static_cast<int64_t>(num_heads) * num_tokens;
  const int64_t groups = num_groups_of(head_dim, group_size);
  const int64_t wpr = words_per_row(head_dim, bits);
  kivi_value_dequant_kernel<<<grid_for(rows * wpr, kThreads, 16), kThreads>>>(
      codes, scale, minv, rows, head_dim, group_size, groups, bits, wpr, v_hat);
  KVSIM_CUDA_CHECK_LAUNCH("kivi_value_dequant_kernel");
}

void skvq_quantize(const float* x, std::int64_t num_rows, int num_channels,
                   const std::int32_t* perm, const std::int32_t* group_starts, int num_groups,
                   int max_int, float clip, const float* group_clip, std::uint32_t* codes,
                   std::uint16_t* scale, std::uint16_t* zero) {
  constexpr const char* kWhat = "gpu::skvq_quantize";
  detail::validate_skvq(kWhat, x, codes, scale, zero, perm, group_starts, num_rows, num_channels,
                        num_groups, max_int);
  if (group_clip == nullptr) detail::validate_clip(kWhat, clip, "clip");
  require_cuda();
  check_device_pointers(kWhat, {{perm, "perm"},
                                {group_starts, "group_starts"},
                                {group_clip, "group_clip"},
                                {x, "x"},
                                {codes, "codes"},
                                {scale, "scale"},
                                {zero, "zero"}});
  check_skvq_layout(kWhat, perm, group_starts, group_clip, num_channels, num_groups);
  if (num_rows == 0) return;
  const int bits = code_bits_for_max(max_int);
  const int64_t wpr = words_per_row(num_channels, bits);
  const unsigned blocks = skvq_grid(num_rows);
  skvq_quantize_kernel<<<blocks, kSkvqThreads, skvq_shared_bytes(num_channels, num_groups)>>>(
      x, num_rows, num_channels, perm, group_starts, num_groups, static_cast<float>(max_int), clip,
      group_clip, bits, wpr, codes, scale, zero);
  KVSIM_CUDA_CHECK_LAUNCH("skvq_quantize_kernel");
}

void skvq_dequantize(const std::uint32_t* codes, const std::uint16_t* scale,
                     const std::uint16_t* zero, std::int64_t num_rows, int num_channels,
                     const std::int32_t* perm, const std::int32_t* group_starts, int num_groups,
                     int max_int, float* x_hat) {
  constexpr const char* kWhat = "gpu::skvq_dequantize";
  detail::validate_skvq(kWhat, x_hat, codes, scale, zero, perm, group_starts, num_rows,
                        num_channels, num_groups, max_int);
  require_cuda();
  check_device_pointers(kWhat, {{perm, "perm"},
                                {group_starts, "group_starts"},
                                {x_hat, "x_hat"},
                                {codes, "codes"},
                                {scale, "scale"},
                                {zero, "zero"}});
  check_skvq_layout(kWhat, perm, group_starts, nullptr, num_channels, num_groups);
  if (num_rows == 0) return;
  const int bits = code_bits_for_max(max_int);
  const int64_t wpr = words_per_row(num_channels, bits);
  const unsigned blocks = skvq_grid(num_rows);
  skvq_dequantize_kernel<<<blocks, kSkvqThreads, skvq_shared_bytes(num_channels, num_groups)>>>(
      codes, scale, zero, num_rows, num_channels, perm, group_starts, num_groups, bits, wpr, x_hat);
  KVSIM_CUDA_CHECK_LAUNCH("skvq_dequantize_kernel");
}

}  // namespace kvsim::gpu
