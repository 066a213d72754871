// CPU references of the L2-norm top-k selection and of MiniCache's SLERP merge/restore
// (contracts in gpu/cpu_reference.h). Compiled with -ffp-contract=off (gpu/CMakeLists.txt).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <numeric>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/validate.h"
#include "sim/base/fp16.h"

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
  std::vector<double> e(static_cast<std::size_t>(dim));
  for (std::int64_t r = 0; r < num_rows; ++r) {
    const float* a = xa + r * dim;
    const float* b = xb + r * dim;
    std::uint16_t* dir = direction + r * dim;
    // From here on, the statements of minicache_slerp() (policies/slerp.h), in the same order.
    double na = 0, nb = 0, dot = 0;
    for (int c = 0; c < dim; ++c) {
      na += static_cast<double>(a[c]) * a[c];
      nb += static_cast<double>(b[c]) * b[c];
      dot += static_cast<double>(a[c]) * b[c];
    }
    na = std::sqrt(na);
    nb = std::sqrt(nb);
    norm_a[r] = float_to_half_bits(static_cast<float>(na));
    norm_b[r] = float_to_half_bits(static_cast<float>(nb));
    std::fill(dir, dir + dim, std::uint16_t{0});
    distance[r] = 0.0;
    merged[r] = 0;
    if (na == 0 || nb == 0) continue;
    const double cosw = std::clamp(dot / (na * nb), -1.0, 1.0);
    const double w = std::acos(cosw);
    distance[r] = w / std::numbers::pi;
    double wa, wb;
    if (w < 1e-4) {
      wa = 1 - t;
      wb = t;
    } else {
      wa = std::sin((1 - t) * w) / std::sin(w);
      wb = std::sin(t * w) / std::sin(w);
    }
    double norm_e = 0;
    for (int c = 0; c < dim; ++c) {
      e[c] = wa * a[c] / na + wb * b[c] / nb;
      norm_e += e[c] * e[c];
    }
    norm_e = std::sqrt(norm_e);
    if (norm_e == 0) continue;  // opposite vectors with t = 0.5: no direction
    for (int c = 0; c < dim; ++c) dir[c] = float_to_half_bits(static_cast<float>(e[c] / norm_e));
    merged[r] = 1;
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
