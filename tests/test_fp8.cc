// FP8 KV cache: rounding against every value of e4m3 / e5m2 decoded from its bit pattern,
// the store's scales (per tensor, per head, none) by hand, memory to the bit.
#include <gtest/gtest.h>

#include <cmath>

#include "policies/quantizer.h"
#include "sim/base/rng.h"
#include "test_util.h"

namespace kvsim {
namespace {

// The non-negative finite values of a format, from its bit patterns (OCP FP8: e4m3fn has no
// infinities and one NaN pattern, S.1111.111; e5m2 is IEEE-like).
std::vector<float> fp8_values(int exponent_bits, int mantissa_bits, bool ieee_specials) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  std::vector<float> out;
  for (int e = 0; e < (1 << exponent_bits); ++e) {
    for (int m = 0; m < (1 << mantissa_bits); ++m) {
      if (ieee_specials && e == (1 << exponent_bits) - 1) continue;  // inf, NaN
      if (!ieee_specials && e == (1 << exponent_bits) - 1 && m == (1 << mantissa_bits) - 1)
        continue;
      const float frac = static_cast<float>(m) / (1 << mantissa_bits);
      out.push_back(e == 0 ? std::ldexp(frac, 1 - bias) : std::ldexp(1 + frac, e - bias));
    }
  }
  return out;  // ascending; the index's parity is the code's last mantissa bit
}

TEST(Fp8, RoundingMatchesTheNearestValueOfEachFormat) {
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    const bool e4m3 = f == Fp8Format::kE4M3;
    const std::vector<float> table = e4m3 ? fp8_values(4, 3, false) : fp8_values(5, 2, true);
    EXPECT_EQ(table.back(), fp8_max(f));
    Rng rng(3);
    std::vector<float> probes;
    for (size_t i = 0; i + 1 < table.size(); ++i) {
      probes.push_back(table[i]);
      probes.push_back(0.5f * (table[i] + table[i + 1]));  // ties
      probes.push_back(table[i] + 0.3f * (table[i + 1] - table[i]));
    }
    for (int i = 0; i < 2000; ++i)
      probes.push_back(static_cast<float>(rng.uniform() * 1.1 * fp8_max(f)));
    for (float x : probes) {
      // Nearest by brute force; a tie goes to the even index (even last mantissa bit).
      size_t best = 0;
      for (size_t i = 1; i < table.size(); ++i) {
        const float db = std::fabs(table[best] - x), di = std::fabs(table[i] - x);
        if (di < db || (di == db && i % 2 == 0)) best = i;
      }
      const float want = x >= fp8_max(f) ? fp8_max(f) : table[best];
      EXPECT_EQ(round_to_fp8(x, f), want) << (e4m3 ? "e4m3 " : "e5m2 ") << x;
      EXPECT_EQ(round_to_fp8(-x, f), -want);
    }
  }
}

// Two kv heads: head 0's prompt keys reach 896 (tensor scale 896/448 = 2), head 1's 4.48
// (its own scale 0.01). A key 3 of head 1: tensor scale -> fp8(1.5) * 2 = 3; head scale ->
// fp8(300) * 0.01 = 288 * 0.01 (e4m3 spacing 32 in [256, 512): 300 -> 288).
TEST(Fp8, ScalesPerTensorPerHeadAndNone) {
  testing::HandShard s(2, 2, 4, 2, 2);
  s.set_key(0, 0, {896, 0, 0, 0});
  s.set_key(1, 0, {4.48f, 0, 0, 0});
  s.set_key(1, 1, {3, 0, 0, 0});
  struct Case {
    std::string scale;
    float want;
    int64_t meta0, meta1;
  };
  for (const Case& c : {Case{"tensor", 3.f, 64, 0}, Case{"head", 288 * (4.48f / 448), 64, 64},
                        Case{"none", 3.f, 0, 0}}) {
    auto store = Pipeline::create(PolicySpec::parse("fp8:scale=" + c.scale), s.ctx, {}).store;
    HeadCache h0, h1;
    h0.head_dim = h1.head_dim = 4;
    store->insert(0, 0, h0, testing::range(0, 2), s.layer, true);
    store->insert(0, 1, h1, testing::range(0, 2), s.layer, true);
    EXPECT_FLOAT_EQ(h1.keys[4], c.want) << c.scale;
    EXPECT_EQ(store->memory(0, 0).data, 2 * 2 * 4 * 8);
    EXPECT_EQ(store->memory(0, 0).meta, c.meta0) << c.scale;
    EXPECT_EQ(store->memory(0, 1).meta, c.meta1) << c.scale;
    store->removed(0, 1, h1, std::vector<int32_t>{0});
    EXPECT_EQ(store->memory(0, 1).data, 2 * 4 * 8);
  }
}

}  // namespace
}  // namespace kvsim
