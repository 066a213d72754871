// GPU SLERP merge and restore of MiniCache (contract in kernel_declarations.inc; the math of
// slerp_unit_direction() in sim/base/slerp.h). A warp per row: lanes hold channels l, l + 32,
// ...; the three dot products are summed in double with explicitly rounded operations and
// reduced by a butterfly (a different order than the reference's sequential sum: the doubles
// can differ in their last bits, see kernels.h); every later step follows the reference's
// expression order.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <utility>

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

constexpr int kThreads = 256;
constexpr double kPi = 3.14159265358979323846;

__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int m = kWarpSize / 2; m > 0; m /= 2) x = __dadd_rn(x, __shfl_xor_sync(kFullMask, x, m));
  return x;
}

__device__ __forceinline__ std::uint16_t to_half_bits(double x) {
  return __half_as_ushort(__double2half(x));  // rounded once, as double_to_half_bits()
}

// e_c = wa * xa_c / na + wb * xb_c / nb, in slerp_unit_direction()'s order (sim/base/slerp.h).
__device__ __forceinline__ double direction_component(double wa, double wb, float a, float b,
                                                      double na, double nb) {
  return __dadd_rn(__ddiv_rn(__dmul_rn(wa, static_cast<double>(a)), na),
                   __ddiv_rn(__dmul_rn(wb, static_cast<double>(b)), nb));
}

__global__ void __launch_bounds__(kThreads)
    slerp_merge_kernel(const float* __restrict__ xa,  // [rows, dim]
                       const float* __restrict__ xb,  // [rows, dim]
                       int64_t rows, int dim, double t,
                       std::uint16_t* __restrict__ direction,  // [rows, dim]
                       std::uint16_t* __restrict__ norm_a,     // [rows]
                       std::uint16_t* __restrict__ norm_b,     // [rows]
                       double* __restrict__ distance,          // [rows]
                       std::uint8_t* __restrict__ merged) {    // [rows]
  const int lane = threadIdx.x % kWarpSize;
  constexpr int kWarpsPerBlock = kThreads / kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
       r < rows; r += warps) {
    const float* a = xa + r * dim;
    const float* b = xb + r * dim;
    std::uint16_t* dir = direction + r * dim;
    double na = 0.0, nb = 0.0, dot = 0.0;
    for (int c = lane; c < dim; c += kWarpSize) {
      const double va = a[c];
      const double vb = b[c];
      na = __dadd_rn(na, __dmul_rn(va, va));
      nb = __dadd_rn(nb, __dmul_rn(vb, vb));
      dot = __dadd_rn(dot, __dmul_rn(va, vb));
    }
    na = __dsqrt_rn(warp_sum(na));
    nb = __dsqrt_rn(warp_sum(nb));
    dot = warp_sum(dot);

    const bool have_norms = na != 0.0 && nb != 0.0;  // the same in every lane
    double dist = 0.0;
    double wa = 0.0;
    double wb = 0.0;
    if (have_norms) {
      const double cosw = fmin(fmax(__ddiv_rn(dot, __dmul_rn(na, nb)), -1.0), 1.0);
      const double w = acos(cosw);
      dist = __ddiv_rn(w, kPi);
      if (w < 1e-4) {  // SLERP degenerates: normalised linear interpolation
        wa = __dsub_rn(1.0, t);
        wb = t;
      } else {
        const double sw = sin(w);
        wa = __ddiv_rn(sin(__dmul_rn(__dsub_rn(1.0, t), w)), sw);
        wb = __ddiv_rn(sin(__dmul_rn(t, w)), sw);
      }
    }
    double norm_e = 0.0;
    if (have_norms) {
      for (int c = lane; c < dim; c += kWarpSize) {
        const double e = direction_component(wa, wb, a[c], b[c], na, nb);
        norm_e = __dadd_rn(norm_e, __dmul_rn(e, e));
      }
    }
    norm_e = __dsqrt_rn(warp_sum(norm_e));
    const bool ok = have_norms && norm_e != 0.0;
    for (int c = lane; c < dim; c += kWarpSize) {
      dir[c] = ok ? to_half_bits(__ddiv_rn(direction_component(wa, wb, a[c], b[c], na, nb), norm_e))
                  : std::uint16_t{0};
    }
    if (lane == 0) {
      norm_a[r] = to_half_bits(na);
      norm_b[r] = to_half_bits(nb);
      distance[r] = dist;
      merged[r] = ok ? 1 : 0;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    slerp_restore_kernel(const std::uint16_t* __restrict__ direction,  // [rows, dim]
                         const std::uint16_t* __restrict__ norm,       // [rows]
                         int64_t total, int dim,
                         float* __restrict__ x_hat) {  // [rows, dim]
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const float m = __half2float(__ushort_as_half(norm[i / dim]));
    x_hat[i] = __fmul_rn(m, __half2float(__ushort_as_half(direction[i])));
  }
}

}  // namespace

void slerp_merge(const float* xa, const float* xb, std::int64_t num_rows, int dim, double t,
                 std::uint16_t* direction, std::uint16_t* norm_a, std::uint16_t* norm_b,
                 double* distance, std::uint8_t* merged) {
  constexpr const char* kWhat = "gpu::slerp_merge";
  detail::validate_slerp_merge(kWhat, xa, xb, num_rows, dim, t, direction, norm_a, norm_b, distance,
                               merged);
  require_cuda();
  if (num_rows == 0) return;
  detail::check_device_pointers(kWhat, {{xa, "xa"},
                                        {xb, "xb"},
                                        {direction, "direction"},
                                        {norm_a, "norm_a"},
                                        {norm_b, "norm_b"},
                                        {distance, "distance"},
                                        {merged, "merged"}});
  slerp_merge_kernel<<<detail::grid_for(num_rows, kThreads / kWarpSize, 16), kThreads>>>(
      xa, xb, num_rows, dim, t, direction, norm_a, norm_b, distance, merged);
  KVSIM_CUDA_CHECK_LAUNCH("slerp_merge_kernel");
}

void slerp_restore(const std::uint16_t* direction, const std::uint16_t* norm, std::int64_t num_rows,
                   int dim, float* x_hat) {
  constexpr const char* kWhat = "gpu::slerp_restore";
  detail::validate_slerp_restore(kWhat, direction, norm, num_rows, dim, x_hat);
  require_cuda();
  if (num_rows == 0) return;
  detail::check_device_pointers(kWhat,
                                {{direction, "direction"}, {norm, "norm"}, {x_hat, "x_hat"}});
  const int64_t total = num_rows * dim;
  slerp_restore_kernel<<<detail::grid_for(total, kThreads, 16), kThreads>>>(direction, norm, total,
                                                                            dim, x_hat);
  KVSIM_CUDA_CHECK_LAUNCH("slerp_restore_kernel");
}

}  // namespace kvsim::gpu
