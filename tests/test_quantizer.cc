#include <gtest/gtest.h>

#include <cmath>

#include "gpu/cpu_reference.h"
#include "policies/quantizer.h"
#include "sim/base/fp16.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

// Hand-worked 4 tokens x 3 channels at 2 bits (codes 0..3).
//            ch0   ch1   ch2
//   t0   [  0.0,  1.0, -2.0 ]
//   t1   [  0.5,  1.0,  0.0 ]
//   t2   [  1.5,  1.0,  2.0 ]
//   t3   [  3.0,  1.0,  4.0 ]
const float kX[4][3] = {
    {0.0f, 1.0f, -2.0f}, {0.5f, 1.0f, 0.0f}, {1.5f, 1.0f, 2.0f}, {3.0f, 1.0f, 4.0f}};

TEST(Quantizer, HandWorkedPerChannel) {
  // ch0: min 0, scale (3-0)/3 = 1: 0.5 and 1.5 are ties -> even codes 0 and 2.
  // ch1: constant -> scale 0, all codes 0, reconstruction exactly 1.
  // ch2: min -2, scale 6/3 = 2: codes 0,1,2,3, exact.
  const uint8_t want[3][4] = {{0, 0, 2, 3}, {0, 0, 0, 0}, {0, 1, 2, 3}};
  const float want_hat[3][4] = {{0, 0, 2, 3}, {1, 1, 1, 1}, {-2, 0, 2, 4}};
  const float want_scale[3] = {1, 0, 2}, want_min[3] = {0, 1, -2};
  for (int c = 0; c < 3; ++c) {
    uint8_t codes[4];
    float hat[4];
    const QuantGroup g = quantize_group(&kX[0][c], 4, 3, 2, hat, 1, codes);
    EXPECT_EQ(g.scale, want_scale[c]);
    EXPECT_EQ(g.min, want_min[c]);
    for (int t = 0; t < 4; ++t) {
      EXPECT_EQ(codes[t], want[c][t]) << "channel " << c << " token " << t;
      EXPECT_EQ(hat[t], want_hat[c][t]) << "channel " << c << " token " << t;
    }
  }
}

TEST(Quantizer, HandWorkedPerToken) {
  // t0: min -2, scale 1 -> codes [2,3,0]. t1: min 0, scale fp16(1/3) = 0.333251953125:
  // 0.5/s = 1.5004 -> 2, 1/s = 3.0007 -> clamp 3, 0 -> 0. t2: min 1, same scale:
  // [2,0,3]. t3: min 1, scale 1 -> [2,0,3].
  const uint8_t want[4][3] = {{2, 3, 0}, {2, 3, 0}, {2, 0, 3}, {2, 0, 3}};
  const float third = 0.333251953125f;
  const float want_scale[4] = {1, third, third, 1};
  for (int t = 0; t < 4; ++t) {
    uint8_t codes[3];
    float hat[3];
    const QuantGroup g = quantize_group(kX[t], 3, 1, 2, hat, 1, codes);
    EXPECT_EQ(g.scale, want_scale[t]) << t;
    for (int c = 0; c < 3; ++c) {
      EXPECT_EQ(codes[c], want[t][c]) << "token " << t << " channel " << c;
      EXPECT_EQ(hat[c], codes[c] * g.scale + g.min);
    }
  }
}

TEST(Quantizer, ErrorShrinksWithBitsAndStaysWithinHalfStep) {
  Rng rng(11);
  std::vector<float> x(128);
  for (auto& v : x) v = static_cast<float>(rng.normal() * 3);
  double previous = 1e30;
  for (int bits = 1; bits <= 8; ++bits) {
    std::vector<float> hat(x.size());
    const QuantGroup g = quantize_group(x.data(), x.size(), 1, bits, hat.data(), 1);
    double err = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      err += (hat[i] - x[i]) * (hat[i] - x[i]);
      // Within half a step, plus the fp16 rounding of min and scale.
      EXPECT_LE(std::fabs(hat[i] - x[i]), 0.5 * g.scale + 0.01 * std::fabs(x[i]) + 1e-3);
    }
    EXPECT_LT(err, previous) << bits;
    previous = err;
  }
}

TEST(Quantizer, ConstantGroupGivesNoNan) {
  std::vector<float> x(16, -0.7f), hat(16);
  uint8_t codes[16];
  const QuantGroup g = quantize_group(x.data(), 16, 1, 2, hat.data(), 1, codes);
  EXPECT_EQ(g.scale, 0.f);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(codes[i], 0);
    EXPECT_EQ(hat[i], round_to_half(-0.7f));
  }
}

TEST(Quantizer, SidesCountBitsExactly) {
  TokenwiseSide tokens(128, 2, 32);
  tokens.count(10);
  EXPECT_EQ(tokens.memory().data, 10 * 128 * 2);
  EXPECT_EQ(tokens.memory().meta, 10 * 4 * 32);  // 4 groups per token, fp16 scale + min

  HeadCache cache;
  cache.head_dim = 4;
  ChannelwiseSide side(4, 2, 3, /*keys=*/true);
  Rng rng(5);
  for (int t = 0; t < 7; ++t) {
    float k[4], v[4];
    for (int c = 0; c < 4; ++c) k[c] = static_cast<float>(rng.normal()), v[c] = k[c];
    cache.append(t, k, v);
    side.add_pending(t);
    if (side.pending() == 3) side.flush(cache, 3);
  }
  // 2 groups of 3 quantized (2 bits x 4 channels), 1 pending token at fp16,
  // metadata 32 bits per channel per group.
  EXPECT_EQ(side.memory().data, 6 * 4 * 2 + 1 * 4 * 16);
  EXPECT_EQ(side.memory().meta, 2 * 4 * 32);
  const int32_t gone[] = {0, 1, 2, 6};  // the whole first group and the pending token
  side.removed(gone);
  EXPECT_EQ(side.memory().data, 3 * 4 * 2);
  EXPECT_EQ(side.memory().meta, 1 * 4 * 32);
}

// The replay's quantizer and the GPU kernels' CPU reference implement the same
// rule; they must agree bit for bit on random groups.
TEST(Quantizer, AgreesWithGpuCpuReference) {
  Rng rng(21);
  for (int bits : {1, 2, 3, 4, 8}) {
    const int groups = 50, size = 32;
    std::vector<float> x(groups * size);
    for (auto& v : x) v = static_cast<float>(rng.normal() * (1 + bits));
    std::vector<uint8_t> ref_codes(x.size());
    std::vector<uint16_t> ref_scale(groups), ref_min(groups);
    gpu::cpu_reference::quantize_groups(x.data(), groups, size, bits, ref_codes.data(),
                                        ref_scale.data(), ref_min.data());
    for (int g = 0; g < groups; ++g) {
      std::vector<uint8_t> codes(size);
      std::vector<float> hat(size);
      const QuantGroup q =
          quantize_group(x.data() + g * size, size, 1, bits, hat.data(), 1, codes.data());
      EXPECT_EQ(q.scale, half_bits_to_float(ref_scale[g])) << bits << " " << g;
      EXPECT_EQ(q.min, half_bits_to_float(ref_min[g])) << bits << " " << g;
      for (int i = 0; i < size; ++i) ASSERT_EQ(codes[i], ref_codes[g * size + i]) << bits;
    }
  }
}

}  // namespace
}  // namespace kvsim
