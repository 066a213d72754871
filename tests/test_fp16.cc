#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "sim/base/fp16.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

TEST(Fp16, ExactValuesRoundTrip) {
  for (float x : {0.f, -0.f, 1.f, -2.5f, 65504.f, 0.000061035156f, 0.333251953125f}) {
    EXPECT_EQ(half_bits_to_float(float_to_half_bits(x)), x) << x;
  }
  EXPECT_EQ(float_to_half_bits(1.f), 0x3c00);
  EXPECT_EQ(float_to_half_bits(-2.f), 0xc000);
  EXPECT_EQ(float_to_half_bits(65504.f), 0x7bff);
}

TEST(Fp16, RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1).
  EXPECT_EQ(round_to_half(1.f + 0x1p-11f), 1.f);
  // 1 + 3*2^-11 is halfway between 1+2^-10 and 1+2^-9: goes to the even one (1+2^-9).
  EXPECT_EQ(round_to_half(1.f + 3 * 0x1p-11f), 1.f + 0x1p-9f);
  EXPECT_EQ(round_to_half(1.f / 3.f), 0.333251953125f);
}

TEST(Fp16, SubnormalsOverflowAndNan) {
  EXPECT_EQ(round_to_half(0x1p-24f), 0x1p-24f);          // smallest subnormal
  EXPECT_EQ(round_to_half(0x1p-26f), 0.f);               // below half of it
  EXPECT_EQ(round_to_half(3 * 0x1p-25f), 2 * 0x1p-24f);  // tie -> even
  EXPECT_TRUE(std::isinf(round_to_half(65520.f)));
  EXPECT_EQ(round_to_half(65519.f), 65504.f);
  EXPECT_TRUE(std::isnan(round_to_half(std::numeric_limits<float>::quiet_NaN())));
}

TEST(Fp16, RandomValuesWithinHalfUlp) {
  Rng rng(7);
  for (int i = 0; i < 100000; ++i) {
    const float x = static_cast<float>(rng.normal() * 100);
    const float h = round_to_half(x);
    // Relative error of round-to-nearest binary16 is at most 2^-11 for normals.
    EXPECT_LE(std::fabs(h - x), std::fabs(x) * 0x1p-11f + 0x1p-25f) << x;
  }
}

TEST(Bf16, RoundTripAndRounding) {
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(1.f)), 1.f);
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(-3.5f)), -3.5f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> ties to even (1).
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(1.f + 0x1p-8f)), 1.f);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::nanf("")))));
}

}  // namespace
}  // namespace kvsim
