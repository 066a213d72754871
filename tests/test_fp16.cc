#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

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

// The nearest half to a double by definition: the two halves around the float nearest x
// bracket x; the closer one wins, a tie the even pattern (differences computed exactly in
// long double, which holds a half's and a double's bits).
std::uint16_t nearest_half_reference(double x) {
  const std::uint16_t h = float_to_half_bits(static_cast<float>(x));
  std::uint16_t best = h;
  long double best_err = std::fabs(static_cast<long double>(half_bits_to_float(h)) - x);
  for (const int delta : {-1, 1}) {
    const auto c = static_cast<std::uint16_t>(h + delta);
    if ((c & 0x7C00u) == 0x7C00u || (c ^ h) & 0x8000u) continue;  // inf/NaN or sign flip
    const long double err = std::fabs(static_cast<long double>(half_bits_to_float(c)) - x);
    if (err < best_err || (err == best_err && (c & 1u) == 0)) best = c, best_err = err;
  }
  return best;
}

TEST(Fp16, DoublesAreRoundedOnce) {
  // The MiniCache magnitude of issue 16: through float it lands on the tie 4.638671875
  // and goes to 4.640625; the nearest half is 4.63671875.
  EXPECT_EQ(half_bits_to_float(float_to_half_bits(static_cast<float>(4.638671865))), 4.640625f);
  EXPECT_EQ(round_double_to_half(4.638671865), 4.63671875f);
  EXPECT_EQ(round_double_to_half(4.638671875), 4.640625f);  // an exact tie: the even 4.640625
  EXPECT_EQ(round_double_to_half(4.638671885), 4.640625f);
  Rng rng(11);
  int double_rounding_cases = 0;
  for (int i = 0; i < 200000; ++i) {
    // Values just beside a tie between two halves (where double rounding errs), and
    // random ones over the normal and subnormal ranges.
    double x;
    if (i % 2 == 0) {
      const std::uint16_t lo = static_cast<std::uint16_t>(rng.next_u64() % 0x7BFF);
      const double tie = (static_cast<double>(half_bits_to_float(lo)) +
                          half_bits_to_float(static_cast<std::uint16_t>(lo + 1))) /
                         2;
      const double offset = std::ldexp(tie, -30) * static_cast<double>(rng.next_u64() % 64);
      x = rng.next_u64() % 2 ? tie + offset : tie - offset;
    } else {
      x = rng.normal() * std::ldexp(1.0, static_cast<int>(rng.next_u64() % 40) - 28);
    }
    const std::uint16_t want = nearest_half_reference(x);
    ASSERT_EQ(double_to_half_bits(x), want) << x;
    ASSERT_EQ(double_to_half_bits(-x), want ^ 0x8000u) << -x;
    double_rounding_cases += float_to_half_bits(static_cast<float>(x)) != want;
  }
  EXPECT_GT(double_rounding_cases, 100);  // the cases exercise the difference
  EXPECT_TRUE(std::isinf(round_double_to_half(65520.0)));
  EXPECT_EQ(round_double_to_half(65519.99), 65504.f);
  EXPECT_TRUE(std::isnan(round_double_to_half(std::numeric_limits<double>::quiet_NaN())));
}

// The vectorised array conversions (trace reading) give the scalar conversions' bits for
// every one of the 65536 patterns, inf and NaN payloads included, at every array offset mod
// the vector width (the pattern list is converted at offsets 0..16).
TEST(Fp16, ArrayConversionsMatchScalarForEveryPattern) {
  std::vector<uint16_t> bits(65536 + 16);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint16_t>(i * 40503u);
  std::vector<float> half(bits.size()), bf16(bits.size());
  half_bits_to_float_array(bits.data(), half.data(), bits.size());
  bf16_bits_to_float_array(bits.data(), bf16.data(), bits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(half[i]),
              std::bit_cast<uint32_t>(half_bits_to_float(bits[i])))
        << "half pattern " << bits[i];
    ASSERT_EQ(std::bit_cast<uint32_t>(bf16[i]),
              std::bit_cast<uint32_t>(bf16_bits_to_float(bits[i])))
        << "bf16 pattern " << bits[i];
  }
  for (size_t offset = 1; offset <= 16; ++offset) {
    std::vector<float> shifted(bits.size() - offset);
    half_bits_to_float_array(bits.data() + offset, shifted.data(), shifted.size());
    ASSERT_EQ(std::memcmp(shifted.data(), half.data() + offset, shifted.size() * sizeof(float)), 0)
        << "offset " << offset;
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
