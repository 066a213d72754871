// float <-> fp16 conversion (gpu/half.h): exact values, round-to-nearest-even at every
// boundary between neighbouring halves, subnormals, overflow, infinities and NaN.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "sim/base/fp16.h"

namespace kvsim::gpu {
namespace {

float pow2(int e) { return std::ldexp(1.0f, e); }

bool is_half_nan(std::uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x03FFu) != 0; }

static_assert(float_to_half_bits(1.0f) == kHalfOne);
static_assert(half_bits_to_float(kHalfOne) == 1.0f);
static_assert(float_to_half_bits(65504.0f) == kHalfMax);

TEST(Half, ExactValues) {
  EXPECT_EQ(float_to_half_bits(0.0f), 0x0000);
  EXPECT_EQ(float_to_half_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half_bits(1.0f), 0x3C00);
  EXPECT_EQ(float_to_half_bits(-2.0f), 0xC000);
  EXPECT_EQ(float_to_half_bits(0.5f), 0x3800);
  EXPECT_EQ(float_to_half_bits(3.0f), 0x4200);
  EXPECT_EQ(float_to_half_bits(2.5f), 0x4100);
  EXPECT_EQ(float_to_half_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_half_bits(-65504.0f), 0xFBFF);
  EXPECT_EQ(float_to_half_bits(pow2(-14)), 0x0400);         // smallest normal
  EXPECT_EQ(float_to_half_bits(pow2(-24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(float_to_half_bits(1023 * pow2(-24)), 0x03FF);  // largest subnormal
  // Non-representable values round to the nearest half.
  EXPECT_EQ(float_to_half_bits(1.0f / 3.0f), 0x3555);   // 0.333251953125
  EXPECT_EQ(float_to_half_bits(2.0f / 3.0f), 0x3955);   // 0.66650390625
  EXPECT_EQ(float_to_half_bits(0.1f), 0x2E66);          // 0.0999755859375
  EXPECT_EQ(float_to_half_bits(2.0f / 15.0f), 0x3044);  // 0.13330078125

  EXPECT_EQ(half_bits_to_float(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(half_bits_to_float(0x8000)));
  EXPECT_EQ(half_bits_to_float(0x8000), 0.0f);
  EXPECT_EQ(half_bits_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(half_bits_to_float(0x3955), 0.66650390625f);
  EXPECT_EQ(half_bits_to_float(0x2E66), 0.0999755859375f);
  EXPECT_EQ(half_bits_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(half_bits_to_float(0xC000), -2.0f);
  EXPECT_EQ(half_bits_to_float(0x0001), pow2(-24));
  EXPECT_EQ(half_bits_to_float(0x03FF), 1023 * pow2(-24));
  EXPECT_EQ(half_bits_to_float(0x0400), pow2(-14));
  EXPECT_EQ(half_bits_to_float(0x8001), -pow2(-24));
}

TEST(Half, RoundsTiesToEven) {
  // Halves near 1 are 2^-10 apart; 1 + 2^-11 is a tie.
  EXPECT_EQ(float_to_half_bits(1.0f + pow2(-11)), 0x3C00);              // tie -> even (1.0)
  EXPECT_EQ(float_to_half_bits(1.0f + 3 * pow2(-11)), 0x3C02);          // tie -> even (1 + 2^-9)
  EXPECT_EQ(float_to_half_bits(1.0f + pow2(-11) + pow2(-20)), 0x3C01);  // above the tie
  EXPECT_EQ(float_to_half_bits(1.0f + pow2(-11) - pow2(-20)), 0x3C00);  // below the tie
  // Integers: halves in [2048, 4096) are 2 apart.
  EXPECT_EQ(float_to_half_bits(2049.0f), 0x6800);  // -> 2048
  EXPECT_EQ(float_to_half_bits(2051.0f), 0x6802);  // -> 2052
  EXPECT_EQ(float_to_half_bits(-2049.0f), 0xE800);
  // A mantissa carry moves to the next binade: 2 - 2^-11 is a tie between 0x3BFF and 2.0.
  EXPECT_EQ(float_to_half_bits(2.0f - pow2(-11)), 0x4000);
}

TEST(Half, Subnormals) {
  EXPECT_EQ(float_to_half_bits(pow2(-25)), 0x0000);  // tie between 0 and 2^-24 -> 0 (even)
  EXPECT_EQ(float_to_half_bits(std::nextafter(pow2(-25), 1.0f)), 0x0001);
  EXPECT_EQ(float_to_half_bits(-pow2(-25)), 0x8000);     // sign kept on underflow
  EXPECT_EQ(float_to_half_bits(3 * pow2(-25)), 0x0002);  // tie between 1 and 2 units -> 2
  EXPECT_EQ(float_to_half_bits(5 * pow2(-25)), 0x0002);  // tie between 2 and 3 units -> 2
  EXPECT_EQ(float_to_half_bits(pow2(-26)), 0x0000);
  EXPECT_EQ(float_to_half_bits(-pow2(-24)), 0x8001);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(float_to_half_bits(-std::numeric_limits<float>::denorm_min()), 0x8000);
  // Tie between the largest subnormal 0x03FF and the smallest normal 0x0400 -> 0x0400.
  EXPECT_EQ(float_to_half_bits(pow2(-14) - pow2(-25)), 0x0400);
  EXPECT_EQ(float_to_half_bits(pow2(-14) - 3 * pow2(-25)), 0x03FE);  // tie 0x03FE/0x03FF
}

TEST(Half, OverflowInfinityAndNan) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(float_to_half_bits(65519.0f), 0x7BFF);
  EXPECT_EQ(float_to_half_bits(65520.0f), 0x7C00);  // tie with "65536" -> inf (even)
  EXPECT_EQ(float_to_half_bits(65536.0f), 0x7C00);
  EXPECT_EQ(float_to_half_bits(1e10f), 0x7C00);
  EXPECT_EQ(float_to_half_bits(-65520.0f), 0xFC00);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::max()), 0x7C00);
  EXPECT_EQ(float_to_half_bits(inf), kHalfPosInf);
  EXPECT_EQ(float_to_half_bits(-inf), kHalfNegInf);
  EXPECT_EQ(half_bits_to_float(kHalfPosInf), inf);
  EXPECT_EQ(half_bits_to_float(kHalfNegInf), -inf);

  EXPECT_TRUE(is_half_nan(float_to_half_bits(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(is_half_nan(float_to_half_bits(-std::numeric_limits<float>::quiet_NaN())));
  // A signalling NaN whose payload lives only in the low bits must not become infinity.
  EXPECT_TRUE(is_half_nan(float_to_half_bits(std::bit_cast<float>(0x7F800001u))));
  EXPECT_TRUE(std::isnan(half_bits_to_float(0x7E00)));
  EXPECT_TRUE(std::isnan(half_bits_to_float(0xFC01)));
}

// Every half survives half -> float -> half unchanged (NaNs stay NaN).
TEST(Half, RoundTripsAllHalves) {
  for (std::uint32_t h = 0; h <= 0xFFFFu; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = half_bits_to_float(bits);
    if (is_half_nan(bits)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(is_half_nan(float_to_half_bits(f))) << std::hex << h;
    } else {
      ASSERT_EQ(float_to_half_bits(f), bits) << std::hex << h;
    }
  }
}

// At every boundary between two neighbouring finite halves a and b (including b = inf): the
// exact midpoint goes to the even one, and the floats just below/above it go to a/b. This
// covers the rounding rule exhaustively for the subnormal and the normal range, both signs.
TEST(Half, EveryMidpointRoundsToEven) {
  for (std::uint32_t a = 0; a < 0x7C00u; ++a) {
    const auto lo = static_cast<std::uint16_t>(a);
    const auto hi = static_cast<std::uint16_t>(a + 1);
    const double fa = half_bits_to_float(lo);
    // The "half" after 65504 for rounding purposes is 65536 (0x7C00 encodes inf).
    const double fb = hi == 0x7C00u ? 65536.0 : half_bits_to_float(hi);
    const auto mid = static_cast<float>((fa + fb) / 2);  // exact: needs 12 significant bits
    ASSERT_EQ(static_cast<double>(mid), (fa + fb) / 2);
    const std::uint16_t even = (lo & 1u) == 0 ? lo : hi;
    for (const float sign : {1.0f, -1.0f}) {
      const std::uint16_t sign_bit = sign < 0 ? 0x8000 : 0x0000;
      const float m = sign * mid;
      ASSERT_EQ(float_to_half_bits(m), even | sign_bit) << std::hex << a;
      ASSERT_EQ(float_to_half_bits(std::nextafter(m, 0.0f)), lo | sign_bit) << std::hex << a;
      ASSERT_EQ(float_to_half_bits(std::nextafter(m, sign * 1e9f)), hi | sign_bit) << std::hex << a;
    }
  }
}

#if defined(__FLT16_MANT_DIG__) && !defined(__CUDACC__)
// Cross-check against the compiler's own _Float16 conversion on random bit patterns.
TEST(Half, MatchesCompilerFloat16) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  // Biased exponents 95..150 span |x| from 2^-32 (below the subnormal halves) to 2^23 (above
  // the largest half), where all the interesting cases are.
  std::uniform_int_distribution<std::uint32_t> exponent(95, 150);
  for (int i = 0; i < 400000; ++i) {
    std::uint32_t bits = any_bits(rng);
    if (i % 2 == 0) bits = (bits & 0x807FFFFFu) | (exponent(rng) << 23);
    const float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    const auto expected = std::bit_cast<std::uint16_t>(static_cast<_Float16>(f));
    ASSERT_EQ(float_to_half_bits(f), expected) << f;
    ASSERT_EQ(half_bits_to_float(expected), static_cast<float>(std::bit_cast<_Float16>(expected)));
  }
}
#endif

}  // namespace
}  // namespace kvsim::gpu
