// CPU references (gpu/cpu_reference.h): quantization on hand-worked groups, its error bound on
// random data, and attention against a naive double-precision evaluation of the formula.
#include "gpu/cpu_reference.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "sim/base/errors.h"
#include "sim/base/fp16.h"
#include "tests/gpu/test_util.h"

namespace kvsim::gpu {
namespace {

using testing::AttentionCase;
using testing::AttentionData;
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

// --- attention ----------------------------------------------------------------------------

// The textbook formula in double, with no max subtraction (fine for these score ranges).
void naive_attention(const AttentionCase& s, const AttentionData& d, std::vector<double>& out,
                     std::vector<double>& lse) {
  const std::size_t n = static_cast<std::size_t>(s.num_tokens);
  const std::size_t hd = static_cast<std::size_t>(s.head_dim);
  out.assign(static_cast<std::size_t>(s.num_q_heads) * hd, 0.0);
  lse.assign(static_cast<std::size_t>(s.num_q_heads), 0.0);
  for (int h = 0; h < s.num_q_heads; ++h) {
    const std::size_t kvh = static_cast<std::size_t>(h / (s.num_q_heads / s.num_kv_heads));
    double denom = 0.0;
    std::vector<double> numer(hd, 0.0);
    for (std::size_t t = 0; t < n; ++t) {
      double dot = 0.0;
      for (std::size_t i = 0; i < hd; ++i) {
        dot += static_cast<double>(d.q[h * hd + i]) * d.k[(kvh * n + t) * hd + i];
      }
      const double e = std::exp(static_cast<double>(d.scale) * dot);
      denom += e;
      for (std::size_t i = 0; i < hd; ++i) numer[i] += e * d.v[(kvh * n + t) * hd + i];
    }
    for (std::size_t i = 0; i < hd; ++i) out[h * hd + i] = numer[i] / denom;
    lse[static_cast<std::size_t>(h)] = std::log(denom);
  }
}

class CpuAttention : public ::testing::TestWithParam<AttentionCase> {};

// The reference accumulates in double and rounds once to float, so it must agree with the
// naive double evaluation to float rounding: 2^-23 relative, allowed 1e-6 of max(1, |value|).
TEST_P(CpuAttention, MatchesNaiveDoubleFormula) {
  const AttentionCase s = GetParam();
  const AttentionData d = testing::make_attention_data(s, 7);
  std::vector<float> out(static_cast<std::size_t>(s.num_q_heads * s.head_dim));
  std::vector<float> lse(static_cast<std::size_t>(s.num_q_heads));
  cpu_reference::replay_attention(d.q.data(), d.k.data(), d.v.data(), s.num_q_heads, s.num_kv_heads,
                                  s.num_tokens, s.head_dim, d.scale, out.data(), lse.data());
  std::vector<double> ref_out, ref_lse;
  naive_attention(s, d, ref_out, ref_lse);
  for (std::size_t i = 0; i < out.size(); ++i) {
    ASSERT_TRUE(std::isfinite(out[i]));
    EXPECT_NEAR(out[i], ref_out[i], 1e-6 * std::max(1.0, std::fabs(ref_out[i]))) << i;
  }
  for (std::size_t h = 0; h < lse.size(); ++h) {
    ASSERT_TRUE(std::isfinite(lse[h]));
    EXPECT_NEAR(lse[h], ref_lse[h], 1e-6 * std::max(1.0, std::fabs(ref_lse[h]))) << h;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuAttention,
                         ::testing::Values(AttentionCase{1, 1, 1, 64, 1.0f},
                                           AttentionCase{4, 2, 7, 128, 1.0f},
                                           AttentionCase{8, 2, 257, 64, 4.0f},
                                           AttentionCase{2, 1, 1000, 256, 1.0f},
                                           AttentionCase{4, 4, 33, 128, 8.0f}),
                         testing::attention_case_name);

// With one token the softmax weight is exactly 1: out[h] is the v row of h's kv head, which
// pins down the GQA mapping h -> h / (num_q_heads / num_kv_heads).
TEST(CpuAttentionMapping, GroupedQueryHeadsReadTheirKvHead) {
  const int nq = 6, nkv = 3, hd = 64;
  std::vector<float> q = random_uniform(nq * hd, 1);
  std::vector<float> k = random_uniform(nkv * hd, 2);
  std::vector<float> v(static_cast<std::size_t>(nkv * hd));
  for (int kvh = 0; kvh < nkv; ++kvh) {
    for (int i = 0; i < hd; ++i) v[kvh * hd + i] = static_cast<float>(100 * kvh + i);
  }
  std::vector<float> out(nq * hd), lse(nq);
  cpu_reference::replay_attention(q.data(), k.data(), v.data(), nq, nkv, 1, hd, 0.125f, out.data(),
                                  lse.data());
  for (int h = 0; h < nq; ++h) {
    const int kvh = h / 2;
    double dot = 0.0;
    for (int i = 0; i < hd; ++i) dot += static_cast<double>(q[h * hd + i]) * k[kvh * hd + i];
    EXPECT_NEAR(lse[h], 0.125 * dot, 1e-6);
    for (int i = 0; i < hd; ++i) ASSERT_EQ(out[h * hd + i], v[kvh * hd + i]) << h << " " << i;
  }
}

// Scores in the thousands overflow exp() in any precision without max subtraction.
TEST(CpuAttentionStability, HugeScoresStayFinite) {
  const int hd = 64;
  const std::int64_t n = 5;
  std::vector<float> q(hd, 10.0f);
  std::vector<float> k(static_cast<std::size_t>(n * hd));
  std::vector<float> v(static_cast<std::size_t>(n * hd));
  const float token_level[] = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};  // tokens 1 and 3 tie at the top
  for (std::int64_t t = 0; t < n; ++t) {
    for (int i = 0; i < hd; ++i) {
      k[t * hd + i] = token_level[t];
      v[t * hd + i] = static_cast<float>(t);
    }
  }
  std::vector<float> out(hd), lse(1);
  cpu_reference::replay_attention(q.data(), k.data(), v.data(), 1, 1, n, hd, 1.0f, out.data(),
                                  lse.data());
  const double top = 10.0 * 3.0 * hd;  // 1920; the next score is 1280 lower
  EXPECT_NEAR(lse[0], top + std::log(2.0), 1e-3);
  for (int i = 0; i < hd; ++i) EXPECT_FLOAT_EQ(out[i], 2.0f);  // mean of v rows 1 and 3
}

TEST(CpuAttentionArgs, RejectsBadArguments) {
  std::vector<float> in(4 * 256 * 8, 0.5f);
  std::vector<float> out(4 * 256), lse(4);
  const float* p = in.data();
  float* o = out.data();
  auto call = [&](int nq, int nkv, std::int64_t n, int hd, float scale) {
    cpu_reference::replay_attention(p, p, p, nq, nkv, n, hd, scale, o, lse.data());
  };
  EXPECT_NO_THROW(call(2, 1, 4, 64, 1.0f));
  EXPECT_THROW(call(2, 1, 4, 96, 1.0f), ConfigError);  // unsupported head_dim
  EXPECT_THROW(call(3, 2, 4, 64, 1.0f), ConfigError);  // 3 % 2 != 0
  EXPECT_THROW(call(0, 1, 4, 64, 1.0f), ConfigError);
  EXPECT_THROW(call(2, 0, 4, 64, 1.0f), ConfigError);
  EXPECT_THROW(call(2, 1, 0, 64, 1.0f), ConfigError);  // no tokens
  EXPECT_THROW(call(2, 1, 4, 64, std::numeric_limits<float>::quiet_NaN()), ConfigError);
  EXPECT_THROW(call(2, 1, 4, 64, std::numeric_limits<float>::infinity()), ConfigError);
  EXPECT_THROW(cpu_reference::replay_attention(nullptr, p, p, 2, 1, 4, 64, 1.0f, o, lse.data()),
               ConfigError);
  EXPECT_THROW(cpu_reference::replay_attention(p, p, p, 2, 1, 4, 64, 1.0f, o, nullptr),
               ConfigError);
}

}  // namespace
}  // namespace kvsim::gpu
