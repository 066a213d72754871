// CPU references (gpu/cpu_reference.h): quantization on hand-worked groups, its error bound on
// random data, and the base layer's attention reference against a naive double-precision
// evaluation of the formula.
#include "gpu/cpu_reference.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "sim/base/attention.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"
#include "tests/gpu/test_util.h"

namespace kvsim::gpu {
namespace {

using testing::random_uniform;

struct Quantized {
  std::vector<std::uint8_t> codes;
  std::vector<std::uint16_t> scale;
  std::vector<std::uint16_t> minv;
};

Quantized quantize(const std::vector<float>& x, int group_size, int bits) {
  const std::int64_t groups = static_cast<std::int64_t>(x.size()) / group_size;
  Quantized q{std::vector<std::uint8_t>(x.size()), std::vector<std::uint16_t>(groups),
              std::vector<std::uint16_t>(groups)};
  cpu_reference::quantize_groups(x.data(), groups, group_size, bits, q.codes.data(), q.scale.data(),
                                 q.minv.data());
  return q;
}

std::vector<float> dequantize(const Quantized& q, int group_size) {
  std::vector<float> x_hat(q.codes.size());
  cpu_reference::dequantize_groups(q.codes.data(), q.scale.data(), q.minv.data(),
                                   static_cast<std::int64_t>(q.scale.size()), group_size,
                                   x_hat.data());
  return x_hat;
}

// Worked by hand, 4 bits (15 levels), groups of 4:
//  g0: min 0, max 15 -> scale 1 exactly; 0.5 and 1.5 are ties -> 0 and 2 (even).
//  g1: same scale; 2.5 -> 2 and 7.5 -> 8 (ties to even).
//  g2: constant -> scale16 == 0 -> all codes 0, minv = 3.0 (0x4200).
//  g3: min -1 (0xBC00), scale = to_half(2/15) = 0.13330078125 (0x3044);
//      (x + 1) / scale = 0, 15.0037 (clamped to 15), 7.5018 -> 8, 9.7524 -> 10.
TEST(CpuQuantize, HandWorkedFourBits) {
  const std::vector<float> x = {0.0f,  0.5f,  1.5f, 15.0f,  //
                                2.5f,  15.0f, 7.5f, 0.0f,   //
                                3.0f,  3.0f,  3.0f, 3.0f,   //
                                -1.0f, 1.0f,  0.0f, 0.3f};
  const Quantized q = quantize(x, 4, 4);
  EXPECT_EQ(q.codes,
            (std::vector<std::uint8_t>{0, 0, 2, 15, 2, 15, 8, 0, 0, 0, 0, 0, 0, 15, 8, 10}));
  EXPECT_EQ(q.minv, (std::vector<std::uint16_t>{0x0000, 0x0000, 0x4200, 0xBC00}));
  EXPECT_EQ(q.scale, (std::vector<std::uint16_t>{0x3C00, 0x3C00, 0x0000, 0x3044}));

  // x_hat = code * scale16 + mn16; all of these are exact dyadic values.
  const std::vector<float> expected = {0.0f,  0.0f,           2.0f,        15.0f,  //
                                       2.0f,  15.0f,          8.0f,        0.0f,   //
                                       3.0f,  3.0f,           3.0f,        3.0f,   //
                                       -1.0f, 0.99951171875f, 0.06640625f, 0.3330078125f};
  EXPECT_EQ(dequantize(q, 4), expected);
}

// 2 bits: scale = to_half(1/3) = 0.333251953125 (0x3555); x / scale =
// 0, 0.30, 0.75, 1.50037, 2.2506, 3.0007 (-> 3), 1.8004, 1.2003.
TEST(CpuQuantize, HandWorkedTwoBits) {
  const std::vector<float> x = {0.0f, 0.1f, 0.25f, 0.5f, 0.75f, 1.0f, 0.6f, 0.4f};
  const Quantized q = quantize(x, 8, 2);
  EXPECT_EQ(q.codes, (std::vector<std::uint8_t>{0, 0, 1, 2, 2, 3, 2, 1}));
  EXPECT_EQ(q.scale, std::vector<std::uint16_t>{0x3555});
  EXPECT_EQ(q.minv, std::vector<std::uint16_t>{0x0000});
}

// 1 bit: min -2 (0xC000), scale 4 (0x4400); (x + 2) / 4 = 0, 1, 0.5 (tie -> 0), 0.5025, 0.4975.
TEST(CpuQuantize, HandWorkedOneBit) {
  const std::vector<float> x = {-2.0f, 2.0f, 0.0f, 0.01f, -0.01f};
  const Quantized q = quantize(x, 5, 1);
  EXPECT_EQ(q.codes, (std::vector<std::uint8_t>{0, 1, 0, 1, 0}));
  EXPECT_EQ(q.scale, std::vector<std::uint16_t>{0x4400});
  EXPECT_EQ(q.minv, std::vector<std::uint16_t>{0xC000});
  EXPECT_EQ(dequantize(q, 5), (std::vector<float>{-2.0f, 2.0f, -2.0f, 2.0f, -2.0f}));
}

// The sign of a zero min/max does not depend on the order of the elements.
TEST(CpuQuantize, SignedZerosAreCanonical) {
  const std::vector<float> x = {-0.0f, 0.0f, 0.0f, -0.0f, -0.0f, -0.0f};
  const Quantized q = quantize(x, 2, 8);
  EXPECT_EQ(q.minv, (std::vector<std::uint16_t>{0x0000, 0x0000, 0x0000}));
  EXPECT_EQ(q.scale, (std::vector<std::uint16_t>{0x0000, 0x0000, 0x0000}));
  EXPECT_EQ(q.codes, (std::vector<std::uint8_t>(6, 0)));
}

// On random data, for every bit width: codes fit in `bits`, each group's extremes map to the
// end codes, and the reconstruction error is at most half a step plus the fp16 rounding of
// the min and of the scale (which can push the top of the range past the last level).
TEST(CpuQuantize, RandomGroupsErrorBound) {
  const int group_size = 64;
  const std::int64_t groups = 50;
  for (int bits = 1; bits <= 8; ++bits) {
    std::vector<float> x = random_uniform(groups * group_size, 100 + bits, -3.0f, 5.0f);
    const Quantized q = quantize(x, group_size, bits);
    const std::vector<float> x_hat = dequantize(q, group_size);
    const int max_code = (1 << bits) - 1;
    for (std::int64_t g = 0; g < groups; ++g) {
      const auto first = x.begin() + g * group_size;
      const float mn = *std::min_element(first, first + group_size);
      const float mx = *std::max_element(first, first + group_size);
      const float mn16 = half_bits_to_float(q.minv[g]);
      const float scale16 = half_bits_to_float(q.scale[g]);
      EXPECT_EQ(q.minv[g], float_to_half_bits(mn));
      EXPECT_GT(scale16, 0.0f);
      const float bound = 0.5f * scale16 + (mx - mn) / 1024.0f + std::fabs(mn - mn16) + 1e-5f;
      int lowest = max_code;
      int highest = 0;
      for (int i = 0; i < group_size; ++i) {
        const std::size_t at = static_cast<std::size_t>(g * group_size + i);
        ASSERT_LE(q.codes[at], max_code);
        lowest = std::min<int>(lowest, q.codes[at]);
        highest = std::max<int>(highest, q.codes[at]);
        EXPECT_TRUE(std::isfinite(x_hat[at]));
        EXPECT_LE(std::fabs(x_hat[at] - x[at]), bound) << "bits " << bits << " at " << at;
      }
      EXPECT_EQ(lowest, 0) << "bits " << bits << " group " << g;
      EXPECT_EQ(highest, max_code) << "bits " << bits << " group " << g;
    }
  }
}

TEST(CpuQuantize, RejectsBadArguments) {
  std::vector<float> x(8, 1.0f);
  std::vector<std::uint8_t> codes(8);
  std::vector<std::uint16_t> s(2), m(2);
  std::vector<float> x_hat(8);
  EXPECT_THROW(cpu_reference::quantize_groups(x.data(), 2, 4, 0, codes.data(), s.data(), m.data()),
               ConfigError);
  EXPECT_THROW(cpu_reference::quantize_groups(x.data(), 2, 4, 9, codes.data(), s.data(), m.data()),
               ConfigError);
  EXPECT_THROW(cpu_reference::quantize_groups(x.data(), 2, 0, 4, codes.data(), s.data(), m.data()),
               ConfigError);
  EXPECT_THROW(cpu_reference::quantize_groups(x.data(), -1, 4, 4, codes.data(), s.data(), m.data()),
               ConfigError);
  EXPECT_THROW(cpu_reference::quantize_groups(nullptr, 2, 4, 4, codes.data(), s.data(), m.data()),
               ConfigError);
  EXPECT_THROW(cpu_reference::quantize_groups(x.data(), 2, 4, 4, codes.data(), nullptr, m.data()),
               ConfigError);
  EXPECT_THROW(cpu_reference::dequantize_groups(codes.data(), s.data(), m.data(), 2, 4, nullptr),
               ConfigError);
  EXPECT_THROW(
      cpu_reference::dequantize_groups(codes.data(), s.data(), m.data(), 2, -4, x_hat.data()),
      ConfigError);
  // Zero groups is a no-op, even with null pointers.
  EXPECT_NO_THROW(cpu_reference::quantize_groups(nullptr, 0, 4, 4, nullptr, nullptr, nullptr));
  EXPECT_NO_THROW(cpu_reference::dequantize_groups(nullptr, nullptr, nullptr, 0, 4, nullptr));
}

// --- attention --------------------------------------------------------------------------
// The one double-precision attention reference, kvsim::cpu_reference::attend
// (sim/base/attention.h): the reference of the CPU kernels' tests and of the attention
// backends' tests.

struct AttentionCase {
  std::int64_t num_tokens;
  int head_dim;
  float scale_multiplier;  // scale = multiplier / sqrt(head_dim); larger -> peakier softmax
};

// The textbook formula in double, with no max subtraction (fine for these score ranges).
double naive_attention(const std::vector<float>& q, const std::vector<float>& k,
                       const std::vector<float>& v, std::size_t n, std::size_t hd, double scale,
                       std::vector<double>& out) {
  double denom = 0.0;
  out.assign(hd, 0.0);
  for (std::size_t t = 0; t < n; ++t) {
    double dot = 0.0;
    for (std::size_t i = 0; i < hd; ++i) dot += static_cast<double>(q[i]) * k[t * hd + i];
    const double e = std::exp(scale * dot);
    denom += e;
    for (std::size_t i = 0; i < hd; ++i) out[i] += e * v[t * hd + i];
  }
  for (double& x : out) x /= denom;
  return std::log(denom);
}

class CpuAttention : public ::testing::TestWithParam<AttentionCase> {};

// The reference accumulates in double: it must agree with the naive double evaluation to
// double rounding (relative 1e-12 leaves room for the max subtraction's reordering).
TEST_P(CpuAttention, MatchesNaiveDoubleFormula) {
  const AttentionCase c = GetParam();
  const auto n = static_cast<std::size_t>(c.num_tokens);
  const auto hd = static_cast<std::size_t>(c.head_dim);
  const std::vector<float> q = random_uniform(hd, 7), k = random_uniform(n * hd, 8),
                           v = random_uniform(n * hd, 9);
  const double scale = c.scale_multiplier / std::sqrt(static_cast<double>(c.head_dim));
  std::vector<double> out(hd), ref_out;
  const double lse =
      kvsim::cpu_reference::attend(q.data(), k.data(), v.data(), n, c.head_dim, scale, out.data());
  const double ref_lse = naive_attention(q, k, v, n, hd, scale, ref_out);
  for (std::size_t i = 0; i < hd; ++i) {
    EXPECT_NEAR(out[i], ref_out[i], 1e-12 * std::max(1.0, std::fabs(ref_out[i]))) << i;
  }
  EXPECT_NEAR(lse, ref_lse, 1e-12 * std::max(1.0, std::fabs(ref_lse)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuAttention,
                         ::testing::Values(AttentionCase{1, 64, 1.0f}, AttentionCase{7, 128, 1.0f},
                                           AttentionCase{257, 64, 4.0f},
                                           AttentionCase{1000, 256, 1.0f},
                                           AttentionCase{33, 128, 8.0f}),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           const AttentionCase& c = info.param;
                           return testing::case_name("n", c.num_tokens, "_d", c.head_dim, "_x",
                                                     static_cast<int>(c.scale_multiplier));
                         });

// Scores in the thousands overflow exp() in any precision without max subtraction.
TEST(CpuAttentionStability, HugeScoresStayFinite) {
  const int hd = 64;
  const std::size_t n = 5;
  std::vector<float> q(hd, 10.0f), k(n * hd), v(n * hd);
  const float token_level[] = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};  // tokens 1 and 3 tie at the top
  for (std::size_t t = 0; t < n; ++t) {
    for (int i = 0; i < hd; ++i) {
      k[t * hd + i] = token_level[t];
      v[t * hd + i] = static_cast<float>(t);
    }
  }
  std::vector<double> out(hd);
  const double lse =
      kvsim::cpu_reference::attend(q.data(), k.data(), v.data(), n, hd, 1.0, out.data());
  const double top = 10.0 * 3.0 * hd;  // 1920; the next score is 1280 lower
  EXPECT_NEAR(lse, top + std::log(2.0), 1e-9);
  for (int i = 0; i < hd; ++i) EXPECT_DOUBLE_EQ(out[i], 2.0);  // mean of v rows 1 and 3
}

}  // namespace
}  // namespace kvsim::gpu
