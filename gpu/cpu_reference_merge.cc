// CPU references of the L2-norm top-k selection and of MiniCache's SLERP merge/restore
// (contracts in gpu/kernel_declarations.inc; the SLERP math is sim/base/slerp.h, MiniCache's
// own).
// Compiled with -ffp-contract=off (gpu/CMakeLists.txt).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/validate.h"
#include "sim/base/fp16.h"
#include "sim/base/slerp.h"

namespace kvsim::gpu::cpu_reference {
namespace {

// The squared norm in the GPU's order: 32 lane-strided partial sums, then a butterfly.
double squared_norm_warp_order(const float* x, std::int64_t dim) {
  std::array<double, 32> p{};
  for (std::int64_t c = 0; c < dim; ++c) {
    const double v = x[c];
    p[static_cast<std::size_t>(c % 32)] += v * v;  // v * v is exact (a float squared)
  }
  for (int m = 16; m >= 1; m /= 2) {
    std::array<double, 32> next{};
    for (int l = 0; l < 32; ++l) next[l] = p[l] + p[l ^ m];
    p = next;
  }
  return p[0];
}

}  // namespace

void key_norms_topk(const float* k, int num_heads, std::int64_t num_tokens, int head_dim,
                    std::int64_t keep, TiePreference ties, float* norms, std::int32_t* kept) {
  detail::validate_norms_topk("cpu_reference::key_norms_topk", k, num_heads, num_tokens, head_dim,
                              keep, norms, kept);
  const std::int64_t n = num_tokens;
  std::vector<double> sq(static_cast<std::size_t>(n));
  std::vector<std::int32_t> order(static_cast<std::size_t>(n));
  for (std::int64_t h = 0; h < num_heads; ++h) {
    for (std::int64_t t = 0; t < n; ++t) {
      sq[t] = squared_norm_warp_order(k + (h * n + t) * head_dim, head_dim);
      norms[h * n + t] = static_cast<float>(std::sqrt(sq[t]));
    }
    if (keep == 0) continue;
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](std::int32_t x, std::int32_t y) {
      if (sq[x] != sq[y]) return sq[x] < sq[y];
      return ties == TiePreference::kLowerIndex ? x < y : x > y;
    });
    std::sort(order.begin(), order.begin() + keep);
    std::copy_n(order.begin(), keep, kept + h * keep);
  }
}

void slerp_merge(const float* xa, const float* xb, std::int64_t num_rows, int dim, double t,
                 std::uint16_t* direction, std::uint16_t* norm_a, std::uint16_t* norm_b,
                 double* distance, std::uint8_t* merged) {
  detail::validate_slerp_merge("cpu_reference::slerp_merge", xa, xb, num_rows, dim, t, direction,
                               norm_a, norm_b, distance, merged);
  std::vector<double> unit(static_cast<std::size_t>(dim));
  for (std::int64_t r = 0; r < num_rows; ++r) {
    std::uint16_t* dir = direction + r * dim;
    double na = 0, nb = 0;
    distance[r] = 0.0;
    const bool ok =
        slerp_unit_direction(xa + r * dim, xb + r * dim, dim, t, unit.data(), na, nb, distance[r]);
    norm_a[r] = double_to_half_bits(na);
    norm_b[r] = double_to_half_bits(nb);
    merged[r] = ok ? 1 : 0;
    for (int c = 0; c < dim; ++c) {
      dir[c] = ok ? double_to_half_bits(unit[c]) : std::uint16_t{0};
    }
  }
}

void slerp_restore(const std::uint16_t* direction, const std::uint16_t* norm, std::int64_t num_rows,
                   int dim, float* x_hat) {
  detail::validate_slerp_restore("cpu_reference::slerp_restore", direction, norm, num_rows, dim,
                                 x_hat);
  for (std::int64_t r = 0; r < num_rows; ++r) {
    const float m = half_bits_to_float(norm[r]);
    for (std::int64_t c = 0; c < dim; ++c) {
      x_hat[r * dim + c] = m * half_bits_to_float(direction[r * dim + c]);
    }
  }
}

}  // namespace kvsim::gpu::cpu_reference
