// GPU group quantization (kernel_declarations.inc has the exact rule these kernels reproduce).
//
// Bit-exactness with the CPU reference: min/max are exact (and -0 is canonicalised to +0), and
// every arithmetic step uses an explicitly rounded intrinsic (__fsub_rn, __fdiv_rn, __fmul_rn,
// __fadd_rn) that nvcc never fuses or approximates, even under --use_fast_math;
// __float2half_rn and rintf round to nearest even like the host code.
#include <cuda_fp16.h>
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

using detail::kFullMask;
using detail::kWarpSize;

constexpr int kQuantWarps = 8;  // groups per block: one warp per group
constexpr int kQuantThreads = kQuantWarps * kWarpSize;
constexpr int kDequantThreads = 256;

static_assert(sizeof(__half) == sizeof(std::uint16_t), "__half is stored as uint16_t bits");

__global__ void __launch_bounds__(kQuantThreads)
    quantize_groups_kernel(const float* __restrict__ x,  // [num_groups, group_size]
                           std::int64_t num_groups, int group_size, float levels,
                           std::uint8_t* __restrict__ codes,  // [num_groups, group_size]
                           __half* __restrict__ scale,        // [num_groups]
                           __half* __restrict__ minv) {       // [num_groups]
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kQuantWarps +
                             static_cast<std::int64_t>(threadIdx.x / kWarpSize);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kQuantWarps;

  // g is the same for the whole warp, so the shuffles below always see all 32 lanes.
  for (std::int64_t g = first; g < num_groups; g += stride) {
    const float* xg = x + g * group_size;
    std::uint8_t* cg = codes + g * group_size;

    float mn = INFINITY;
    float mx = -INFINITY;
    for (int i = lane; i < group_size; i += kWarpSize) {
      const float xv = xg[i];
      mn = fminf(mn, xv);
      mx = fmaxf(mx, xv);
    }
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      mn = fminf(mn, __shfl_xor_sync(kFullMask, mn, offset));
      mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, offset));
    }
    mn = __fadd_rn(mn, 0.0f);  // -0 -> +0, as on the host
    mx = __fadd_rn(mx, 0.0f);

    const __half mn_h = __float2half_rn(mn);
    const __half scale_h = __float2half_rn(__fdiv_rn(__fsub_rn(mx, mn), levels));
    if (lane == 0) {
      minv[g] = mn_h;
      scale[g] = scale_h;
    }
    const float mn16 = __half2float(mn_h);
    const float scale16 = __half2float(scale_h);

    if (scale16 == 0.0f) {
      for (int i = lane; i < group_size; i += kWarpSize) cg[i] = 0;
    } else {
      for (int i = lane; i < group_size; i += kWarpSize) {
        const float t = __fdiv_rn(__fsub_rn(xg[i], mn16), scale16);
        const float clamped = fminf(fmaxf(t, 0.0f), levels);
        cg[i] = static_cast<std::uint8_t>(rintf(clamped));
      }
    }
  }
}

__global__ void __launch_bounds__(kDequantThreads)
    dequantize_groups_kernel(const std::uint8_t* __restrict__ codes,  // [num_groups, group_size]
                             const __half* __restrict__ scale,        // [num_groups]
                             const __half* __restrict__ minv,         // [num_groups]
                             std::int64_t total, int group_size,
                             float* __restrict__ x_hat) {  // [num_groups, group_size]
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const std::int64_t g = i / group_size;
    const float product = __fmul_rn(static_cast<float>(codes[i]), __half2float(scale[g]));
    x_hat[i] = __fadd_rn(product, __half2float(minv[g]));
  }
}

}  // namespace

void quantize_groups(const float* x, std::int64_t num_groups, int group_size, int bits,
                     std::uint8_t* codes, std::uint16_t* scale, std::uint16_t* minv) {
  constexpr const char* kWhat = "gpu::quantize_groups";
  detail::validate_quantize(kWhat, x, codes, scale, minv, num_groups, group_size, bits);
  require_cuda();
  if (num_groups == 0) return;
  detail::check_device_pointers(kWhat,
                                {{x, "x"}, {codes, "codes"}, {scale, "scale"}, {minv, "minv"}});

  const auto levels = static_cast<float>((1 << bits) - 1);
  const unsigned blocks = detail::grid_for(num_groups, kQuantWarps, 16);
  quantize_groups_kernel<<<blocks, kQuantThreads>>>(x, num_groups, group_size, levels, codes,
                                                    reinterpret_cast<__half*>(scale),
                                                    reinterpret_cast<__half*>(minv));
  KVSIM_CUDA_CHECK_LAUNCH("quantize_groups_kernel");
}

void dequantize_groups(const std::uint8_t* codes, const std::uint16_t* scale,
                       const std::uint16_t* minv, std::int64_t num_groups, int group_size,
                       float* x_hat) {
  constexpr const char* kWhat = "gpu::dequantize_groups";
  detail::validate_dequantize(kWhat, codes, scale, minv, num_groups, group_size, x_hat);
  require_cuda();
  if (num_groups == 0) return;
  detail::check_device_pointers(
      kWhat, {{codes, "codes"}, {scale, "scale"}, {minv, "minv"}, {x_hat, "x_hat"}});

  const std::int64_t total = num_groups * group_size;
  const unsigned blocks = detail::grid_for(total, kDequantThreads, 32);
  dequantize_groups_kernel<<<blocks, kDequantThreads>>>(
      codes, reinterpret_cast<const __half*>(scale), reinterpret_cast<const __half*>(minv), total,
      group_size, x_hat);
  KVSIM_CUDA_CHECK_LAUNCH("dequantize_groups_kernel");
}

}  // namespace kvsim::gpu
