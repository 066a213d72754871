// MiniCache SLERP merge/restore: the CPU reference against hand-worked cases and against
// minicache_slerp() of policies/slerp.h (always run), and the GPU against the reference
// (skipped without a CUDA device).
#include "policies/slerp.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/kernels.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"
#include "tests/gpu/test_util.h"

namespace kvsim::gpu {
namespace {

using testing::random_uniform;

struct Merge {
  std::vector<std::uint16_t> direction, norm_a, norm_b;
  std::vector<double> distance;
  std::vector<std::uint8_t> merged;
};

Merge merge_cpu(const std::vector<float>& xa, const std::vector<float>& xb, std::int64_t rows,
                int dim, double t) {
  Merge m{std::vector<std::uint16_t>(static_cast<std::size_t>(rows * dim)),
          std::vector<std::uint16_t>(static_cast<std::size_t>(rows)),
          std::vector<std::uint16_t>(static_cast<std::size_t>(rows)),
          std::vector<double>(static_cast<std::size_t>(rows)),
          std::vector<std::uint8_t>(static_cast<std::size_t>(rows))};
  cpu_reference::slerp_merge(xa.data(), xb.data(), rows, dim, t, m.direction.data(),
                             m.norm_a.data(), m.norm_b.data(), m.distance.data(), m.merged.data());
  return m;
}

// Orthogonal unit vectors: W = pi/2, distance 1/2, (wa, wb) = (sin(0.2 pi), sin(0.3 pi)) =
// (0.587785..., 0.809016...), already of norm 1: direction = fp16 of those; norms 1 (0x3C00).
TEST(CpuSlerp, HandWorkedOrthogonal) {
  const Merge m = merge_cpu({1.0f, 0.0f}, {0.0f, 1.0f}, 1, 2, 0.6);
  EXPECT_EQ(m.merged[0], 1);
  EXPECT_NEAR(m.distance[0], 0.5, 1e-15);
  EXPECT_EQ(m.direction[0], float_to_half_bits(0.5877852523f));
  EXPECT_EQ(m.direction[1], float_to_half_bits(0.8090169944f));
  EXPECT_EQ(m.norm_a[0], 0x3C00);
  EXPECT_EQ(m.norm_b[0], 0x3C00);
  std::vector<float> x_hat(2);
  const std::uint16_t two = float_to_half_bits(2.0f);
  cpu_reference::slerp_restore(m.direction.data(), &two, 1, 2, x_hat.data());
  EXPECT_EQ(x_hat[0], 2.0f * half_bits_to_float(m.direction[0]));
  EXPECT_NEAR(x_hat[0], 2 * 0.5877852523, 1e-3);
  EXPECT_NEAR(x_hat[1], 2 * 0.8090169944, 1e-3);
}

// Parallel vectors (W ~ 0 < 1e-4): the normalised-lerp fallback returns the common direction.
// Zero vectors and opposite vectors at t = 0.5 (e = 0) have no direction.
TEST(CpuSlerp, FallbackAndDegenerateRows) {
  const std::vector<float> xa = {3, 4, /**/ 0, 0, /**/ 1, 2, /**/ 0.6f, 0.8f};
  const std::vector<float> xb = {6, 8, /**/ 1, 1, /**/ -1, -2, /**/ 0.6f, 0.8f};
  const Merge m = merge_cpu(xa, xb, 4, 2, 0.5);
  EXPECT_EQ(m.merged, (std::vector<std::uint8_t>{1, 0, 0, 1}));
  EXPECT_EQ(m.direction[0], float_to_half_bits(0.6f));
  EXPECT_EQ(m.direction[1], float_to_half_bits(0.8f));
  EXPECT_LT(m.distance[0], 1e-7);
  EXPECT_EQ(m.norm_a[0], float_to_half_bits(5.0f));
  EXPECT_EQ(m.norm_b[0], float_to_half_bits(10.0f));
  EXPECT_EQ(m.norm_a[1], 0);  // zero vector: its norm, no direction, distance 0
  EXPECT_EQ(m.distance[1], 0.0);
  EXPECT_EQ(m.direction[2], 0);
  EXPECT_EQ(m.direction[3], 0);
  EXPECT_NEAR(m.distance[2], 1.0, 1e-7);  // opposite: W = pi
  EXPECT_EQ(m.direction[6], float_to_half_bits(0.6f));
}

// Random rows (and a few near-parallel ones) against minicache_slerp(): bit for bit.
TEST(CpuSlerp, BitIdenticalToMiniCacheMath) {
  const int dim = 64;
  const std::int64_t rows = 300;
  std::vector<float> xa = random_uniform(static_cast<std::size_t>(rows * dim), 1, -2, 2);
  std::vector<float> xb = random_uniform(static_cast<std::size_t>(rows * dim), 2, -2, 2);
  for (std::int64_t r = 0; r < rows; r += 7) {  // near-parallel: xb = 1.5 xa + tiny noise
    for (int c = 0; c < dim; ++c)
      xb[r * dim + c] = 1.5f * xa[r * dim + c] * (1.0f + 1e-7f * (c % 3));
  }
  for (double t : {0.6, 0.0, 1.0, 0.25}) {
    const Merge m = merge_cpu(xa, xb, rows, dim, t);
    for (std::int64_t r = 0; r < rows; ++r) {
      std::vector<float> dir(dim, 0.0f);
      double distance = 0;
      float na = 0, nb = 0;
      const bool ok = minicache_slerp(xa.data() + r * dim, xb.data() + r * dim, dim, t, dir.data(),
                                      distance, na, nb);
      ASSERT_EQ(m.merged[r], ok ? 1 : 0) << r;
      ASSERT_EQ(m.norm_a[r], float_to_half_bits(na));  // minicache stores round_to_half(norm)
      ASSERT_EQ(m.norm_b[r], float_to_half_bits(nb));
      ASSERT_EQ(m.distance[r], distance) << r;
      for (int c = 0; c < dim; ++c) {
        ASSERT_EQ(half_bits_to_float(m.direction[r * dim + c]), dir[c]) << r << " " << c;
      }
    }
  }
}

TEST(CpuSlerp, RejectsBadArguments) {
  std::vector<float> x(8, 1.0f), x_hat(8);
  std::vector<std::uint16_t> dir(8), na(2), nb(2);
  std::vector<double> dist(2);
  std::vector<std::uint8_t> merged(2);
  auto call = [&](std::int64_t rows, int dim, double t, std::uint8_t* out) {
    cpu_reference::slerp_merge(x.data(), x.data(), rows, dim, t, dir.data(), na.data(), nb.data(),
                               dist.data(), out);
  };
  EXPECT_NO_THROW(call(2, 4, 0.6, merged.data()));
  EXPECT_THROW(call(-1, 4, 0.6, merged.data()), ConfigError);
  EXPECT_THROW(call(2, 0, 0.6, merged.data()), ConfigError);
  EXPECT_THROW(call(2, 4, 1.5, merged.data()), ConfigError);
  EXPECT_THROW(call(2, 4, NAN, merged.data()), ConfigError);
  EXPECT_THROW(call(2, 4, 0.6, nullptr), ConfigError);
  EXPECT_THROW(cpu_reference::slerp_restore(dir.data(), na.data(), 2, 4, nullptr), ConfigError);
  EXPECT_THROW(slerp_merge(x.data(), x.data(), 2, 4, -0.1, dir.data(), na.data(), nb.data(),
                           dist.data(), merged.data()),
               ConfigError);
  EXPECT_THROW(slerp_restore(dir.data(), na.data(), 2, -4, x_hat.data()), ConfigError);
}

TEST(CpuSlerp, GpuThrowsBackendUnavailableWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is present";
  std::vector<float> x(8, 1.0f), x_hat(8);
  std::vector<std::uint16_t> dir(8), na(2), nb(2);
  std::vector<double> dist(2);
  std::vector<std::uint8_t> merged(2);
  EXPECT_THROW(slerp_merge(x.data(), x.data(), 2, 4, 0.6, dir.data(), na.data(), nb.data(),
                           dist.data(), merged.data()),
               BackendUnavailable);
  EXPECT_THROW(slerp_restore(dir.data(), na.data(), 2, 4, x_hat.data()), BackendUnavailable);
}

// --- GPU against the CPU reference -------------------------------------------------------------

struct SlerpCase {
  std::int64_t rows;
  int dim;
  double t;
};

class GpuSlerp : public ::testing::TestWithParam<SlerpCase> {};

// Random rows, with special rows mixed in: zero, parallel, near-parallel (W ~ 1e-6, the
// fallback), identical, and -- for t = 0.5 only -- opposite (then e is exactly 0 on both sides:
// no direction). For other t, minicache_slerp()'s formula on exactly opposite vectors divides the
// rounding noise of sin((1-t)pi) - sin(t pi) by sin(pi) ~ 1e-16: an ill-posed direction (such
// tokens have distance 1 and are retained, never merged), so it is not generated.
void slerp_inputs(const SlerpCase& c, std::vector<float>& xa, std::vector<float>& xb) {
  xa = random_uniform(static_cast<std::size_t>(c.rows * c.dim), 3, -2, 2);
  xb = random_uniform(static_cast<std::size_t>(c.rows * c.dim), 4, -2, 2);
  for (std::int64_t r = 0; r < c.rows; ++r) {
    float* a = xa.data() + r * c.dim;
    float* b = xb.data() + r * c.dim;
    switch (r % 10) {
      case 3:
        std::fill(a, a + c.dim, 0.0f);
        break;
      case 5:
        for (int i = 0; i < c.dim; ++i) b[i] = 0.5f * a[i];
        break;
      case 6:
        for (int i = 0; i < c.dim; ++i) b[i] = a[i] * (1.0f + 1e-6f * static_cast<float>(i % 5));
        break;
      case 7:
        if (c.t == 0.5) {
          for (int i = 0; i < c.dim; ++i) b[i] = -a[i];
        }
        break;
      case 8:
        std::copy_n(a, c.dim, b);
        break;
      default:
        break;
    }
  }
}

// Tolerance. The device sums the three dot products in another order and uses CUDA's acos/sin,
// so its doubles may differ from the reference's in the last bits (~1e-16 relative):
//  - merged flags: equal;
//  - fp16 direction and norms: equal, except where the exact value lies within 2^-22
//    (relative) of the midpoint between the two fp16 results (a rounding boundary that a
//    1e-16 difference can cross, directly or through the intermediate float); such cases are
//    counted and reported;
//  - distance W / pi: the products a_i b_i and a_i^2 are exact in double, so cos W differs
//    only by the summation order. Sequential sums of d terms are within (d - 1) u of the exact
//    sum of |terms| (u = 2^-53), the device's per-lane sums plus a 5-step butterfly within
//    (d/32 + 4) u; with the square roots, the product and the division, each side's cos W is
//    within (2n + 4) u of the exact value (n its summation length; Cauchy-Schwarz bounds
//    sum |a_i b_i| by |a| |b|), so the two differ by at most (2d + d/16 + 14) u. acos turns a
//    change of cos W into at most that change / sin W (also near W = 0, where
//    sqrt(W^2 + 2 delta) - W <= delta / W), and acos itself is within 4 ulp on both sides:
//    |dW| <= (2d + d/16 + 14) u / max(sin W, 1e-8) + 4 u W, divided by pi, plus 1e-15.
//    (The first GPU run, on an H200, saw 1e-9 at d = 1000 with W ~ 1.4e-6 where an earlier
//    d-independent 1e-15 / sin W allowed 7e-10: that bound ignored the summation length.)
//  - restore: bit-identical (one float product of the same fp16 inputs).
double distance_tolerance(int dim, double w) {
  constexpr double kUnit = 0x1p-53;
  const double cos_diff = (2.0 * dim + dim / 16.0 + 14.0) * kUnit;
  return (cos_diff / std::max(std::sin(w), 1e-8) + 4.0 * kUnit * w) / std::numbers::pi + 1e-15;
}

// The bound is not vacuous: at d = 1000 and W = 1.4e-6 (the near-parallel rows) it allows
// ~5e-8 of a distance of ~4.5e-7, and at d = 64 for an ordinary W = 1 about 2e-15.
TEST(CpuSlerpTolerance, ScalesWithDimensionAndAngle) {
  EXPECT_LT(distance_tolerance(1000, 1.4e-6), 0.2 * 4.5e-7);
  EXPECT_GT(distance_tolerance(1000, 1.4e-6), 1.1e-9);  // the difference seen on an H200
  EXPECT_LT(distance_tolerance(64, 1.0), 1e-14);
  EXPECT_LT(distance_tolerance(64, 1.0), distance_tolerance(1000, 1.0));
}

TEST_P(GpuSlerp, MatchesCpuReference) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const SlerpCase c = GetParam();
  std::vector<float> xa, xb;
  slerp_inputs(c, xa, xb);
  const Merge ref = merge_cpu(xa, xb, c.rows, c.dim, c.t);

  DeviceBuffer<float> d_xa{std::span<const float>(xa)}, d_xb{std::span<const float>(xb)};
  DeviceBuffer<std::uint16_t> d_dir(ref.direction.size()), d_na(ref.norm_a.size()),
      d_nb(ref.norm_b.size());
  DeviceBuffer<double> d_dist(ref.distance.size());
  DeviceBuffer<std::uint8_t> d_merged(ref.merged.size());
  slerp_merge(d_xa.data(), d_xb.data(), c.rows, c.dim, c.t, d_dir.data(), d_na.data(), d_nb.data(),
              d_dist.data(), d_merged.data());
  const std::vector<std::uint16_t> dir = d_dir.to_host(), na = d_na.to_host(), nb = d_nb.to_host();
  const std::vector<double> dist = d_dist.to_host();
  EXPECT_EQ(d_merged.to_host(), ref.merged);

  auto near_tie = [](double exact, std::uint16_t h1, std::uint16_t h2) {
    const double mid = 0.5 * (static_cast<double>(half_bits_to_float(h1)) + half_bits_to_float(h2));
    return std::fabs(exact - mid) <= std::ldexp(std::fabs(exact), -22);
  };
  std::int64_t ties = 0;
  for (std::int64_t r = 0; r < c.rows; ++r) {
    const float* a = xa.data() + r * c.dim;
    const float* b = xb.data() + r * c.dim;
    std::vector<float> unused(static_cast<std::size_t>(c.dim));
    std::vector<double> exact_dir;
    double unused_distance = 0;
    float norm_a = 0, norm_b = 0;
    minicache_slerp(a, b, c.dim, c.t, unused.data(), unused_distance, norm_a, norm_b, &exact_dir);
    double exact_na = 0, exact_nb = 0;
    for (int i = 0; i < c.dim; ++i) {
      exact_na += static_cast<double>(a[i]) * a[i];
      exact_nb += static_cast<double>(b[i]) * b[i];
    }
    const std::pair<std::uint16_t, std::uint16_t> norm_pairs[] = {{na[r], ref.norm_a[r]},
                                                                  {nb[r], ref.norm_b[r]}};
    const double exact_norms[] = {std::sqrt(exact_na), std::sqrt(exact_nb)};
    for (int s = 0; s < 2; ++s) {
      const auto [gpu, want] = norm_pairs[s];
      if (gpu == want) continue;
      ASSERT_TRUE(near_tie(exact_norms[s], gpu, want))
          << "row " << r << " norm " << s << ": gpu " << gpu << " ref " << want;
      ++ties;
    }
    for (int i = 0; i < c.dim; ++i) {
      const std::size_t at = static_cast<std::size_t>(r * c.dim + i);
      if (dir[at] == ref.direction[at]) continue;
      ASSERT_TRUE(ref.merged[r] && !exact_dir.empty() &&
                  near_tie(exact_dir[i], dir[at], ref.direction[at]))
          << "row " << r << " channel " << i << ": gpu " << dir[at] << " ref " << ref.direction[at];
      ++ties;
    }
    ASSERT_TRUE(std::isfinite(dist[r]));
    const double w = ref.distance[r] * std::numbers::pi;
    EXPECT_NEAR(dist[r], ref.distance[r], distance_tolerance(c.dim, w)) << r;
  }
  RecordProperty("fp16_near_tie_differences", std::to_string(ties));

  // Restore from the reference's direction and norms: bit-identical.
  std::vector<float> ref_hat(ref.direction.size());
  cpu_reference::slerp_restore(ref.direction.data(), ref.norm_a.data(), c.rows, c.dim,
                               ref_hat.data());
  d_dir.upload(ref.direction);
  d_na.upload(ref.norm_a);
  DeviceBuffer<float> d_hat(ref_hat.size());
  slerp_restore(d_dir.data(), d_na.data(), c.rows, c.dim, d_hat.data());
  const std::vector<float> x_hat = d_hat.to_host();
  for (std::size_t i = 0; i < x_hat.size(); ++i) {
    ASSERT_TRUE(std::isfinite(x_hat[i])) << i;
    ASSERT_EQ(x_hat[i], ref_hat[i]) << i;
  }
}

// One row; dims below, at and above the warp width and not multiples of it; MiniCache's t = 0.6
// and the end points; many rows.
INSTANTIATE_TEST_SUITE_P(Shapes, GpuSlerp,
                         ::testing::Values(SlerpCase{1, 1, 0.6}, SlerpCase{7, 3, 0.6},
                                           SlerpCase{1000, 64, 0.6}, SlerpCase{4096, 128, 0.6},
                                           SlerpCase{333, 256, 0.5}, SlerpCase{100, 1000, 0.0},
                                           SlerpCase{50, 33, 1.0}, SlerpCase{20000, 128, 0.25}),
                         [](const auto& info) {
                           const SlerpCase& c = info.param;
                           return testing::case_name("r", c.rows, "_d", c.dim, "_t",
                                                     static_cast<int>(c.t * 100));
                         });

}  // namespace
}  // namespace kvsim::gpu
