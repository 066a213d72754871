// CPU references of the group quantization kernels (contracts in kernel_declarations.inc).
//
// This file is compiled with -ffp-contract=off (gpu/CMakeLists.txt) so that the float
// expressions of the quantization rule are evaluated exactly as written, like the __f*_rn
// intrinsics used by the CUDA kernels.
#include "gpu/cpu_reference.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "gpu/validate.h"
#include "sim/base/fp16.h"

namespace kvsim::gpu::cpu_reference {

void quantize_groups(const float* x, std::int64_t num_groups, int group_size, int bits,
                     std::uint8_t* codes, std::uint16_t* scale, std::uint16_t* minv) {
  detail::validate_quantize("cpu_reference::quantize_groups", x, codes, scale, minv, num_groups,
                            group_size, bits);
  const auto levels = static_cast<float>((1 << bits) - 1);
  const auto gs = static_cast<std::size_t>(group_size);

  for (std::int64_t g = 0; g < num_groups; ++g) {
    const float* xg = x + static_cast<std::size_t>(g) * gs;
    std::uint8_t* cg = codes + static_cast<std::size_t>(g) * gs;

    float mn = xg[0];
    float mx = xg[0];
    for (std::size_t i = 1; i < gs; ++i) {
      mn = std::min(mn, xg[i]);
      mx = std::max(mx, xg[i]);
    }
    // min/max of {-0, +0} depends on the visiting order; x + 0 maps -0 to +0 (and nothing
    // else changes), so the stored fp16 bits do not depend on the reduction order.
    mn = mn + 0.0f;
    mx = mx + 0.0f;

    const float range = mx - mn;
    const std::uint16_t mn_bits = float_to_half_bits(mn);
    const std::uint16_t scale_bits = float_to_half_bits(range / levels);
    minv[g] = mn_bits;
    scale[g] = scale_bits;
    const float mn16 = half_bits_to_float(mn_bits);
    const float scale16 = half_bits_to_float(scale_bits);

    if (scale16 == 0.0f) {
      std::fill(cg, cg + gs, std::uint8_t{0});
      continue;
    }
    for (std::size_t i = 0; i < gs; ++i) {
      const float diff = xg[i] - mn16;
      const float t = std::clamp(diff / scale16, 0.0f, levels);
      // std::rint returns exactly what std::nearbyint does (round to nearest, ties to even, in
      // the default rounding mode) but may raise FE_INEXACT, which lets it skip saving and
      // restoring the floating-point environment: 2-3x faster here. rintf on the device.
      cg[i] = static_cast<std::uint8_t>(std::rint(t));
    }
  }
}

void dequantize_groups(const std::uint8_t* codes, const std::uint16_t* scale,
                       const std::uint16_t* minv, std::int64_t num_groups, int group_size,
                       float* x_hat) {
  detail::validate_dequantize("cpu_reference::dequantize_groups", codes, scale, minv, num_groups,
                              group_size, x_hat);
  const auto gs = static_cast<std::size_t>(group_size);
  for (std::int64_t g = 0; g < num_groups; ++g) {
    const float mn16 = half_bits_to_float(minv[g]);
    const float scale16 = half_bits_to_float(scale[g]);
    const std::size_t base = static_cast<std::size_t>(g) * gs;
    for (std::size_t i = 0; i < gs; ++i) {
      const float product = static_cast<float>(codes[base + i]) * scale16;
      x_hat[base + i] = product + mn16;
    }
  }
}

}  // namespace kvsim::gpu::cpu_reference
