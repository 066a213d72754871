// hf_quantized (transformers' QuantizedCache): quanto's groups by hand, HQQ's strided groups on
// axis 0 (groups that span tokens), the flush timing and memory to the bit at every decode
// step, and the refusal to follow an evict stage. The comparison with the libraries' own code
// is tests/python/test_hf_quantized.py.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

namespace kvsim {
namespace {

using testing::TempDir;

std::vector<float> rows(const std::vector<float>& flat, size_t from, size_t n) {
  return {flat.begin() + from, flat.begin() + from + n};
}

// quanto, axis 0, group 4 = one token's 4 channels, 2 bits: scale (max-min)/3, shift -min.
//   [0, 1, 2, 3]      scale 1: exact.
//   [0, 0.4, 0.6, 3]  scale 1: codes 0, 0, 1, 3 -> [0, 0, 1, 3].
TEST(HfQuantized, QuantoGroupsByHand) {
  testing::HandShard s(1, 1, 4, 2, 2);
  s.set_key(0, 0, {0, 1, 2, 3});
  s.set_key(0, 1, {0, 0.4f, 0.6f, 3});
  auto store =
      Pipeline::create(PolicySpec::parse("hf_quantized:backend=quanto,bits=2,group=4"), s.ctx, {})
          .store;
  HeadCache cache;
  cache.head_dim = 4;
  store->insert(0, 0, cache, testing::range(0, 2), s.layer, true);
  EXPECT_EQ(rows(cache.keys, 0, 4), (std::vector<float>{0, 1, 2, 3}));
  EXPECT_EQ(rows(cache.keys, 4, 4), (std::vector<float>{0, 0, 1, 3}));
  // 2 tokens x 4 channels x 2 bits, K and V; 2 groups each of K and V, scale + shift at 16 b.
  EXPECT_EQ(store->memory(0, 0).data, 2 * 4 * 2 * 2);
  EXPECT_EQ(store->memory(0, 0).meta, 4 * 32);
}

// HQQ axis 0 reshapes the flat [T, d] tensor to [G, -1]: with T = 4, d = 4, G = 4 a group is
// {i, i + 4, i + 8, i + 12}, channel i of every token. Equal tokens make every group constant,
// which HQQ reproduces exactly even at 1 bit; axis 1 (a token's 4 channels) cannot.
TEST(HfQuantized, HqqAxisZeroGroupsAreStrided) {
  testing::HandShard s(1, 1, 4, 4, 4);
  const std::vector<float> token = {0.5f, -1.25f, 3, 7};
  for (int t = 0; t < 4; ++t) s.set_key(0, t, token);
  for (int axis : {0, 1}) {
    auto store =
        Pipeline::create(PolicySpec::parse("hf_quantized:backend=hqq,bits=1,group=4,k_axis=" +
                                           std::to_string(axis)),
                         s.ctx, {})
            .store;
    HeadCache cache;
    cache.head_dim = 4;
    store->insert(0, 0, cache, testing::range(0, 4), s.layer, true);
    double err = 0;
    for (int i = 0; i < 16; ++i) err += std::fabs(cache.keys[i] - token[i % 4]);
    if (axis == 0) {
      EXPECT_LT(err, 1e-5) << "strided groups are constant";
    } else {
      EXPECT_GT(err, 0.1) << "consecutive channels differ";
    }
  }
}

// Residual R = 8 after a 64-token prefill (all quantized): attention at step t sees
// (t - 64) % 8 + 1 full-precision tokens; the whole cache is re-quantized after the step that
// brings them to 8. Bits: b per quantized element, 16 per residual one; at KV head 0 the
// layer's groups (2 tensors x Hkv x quantized x d / G) at 32 bits.
TEST(HfQuantized, FlushTimingAndMemoryToTheBit) {
  TempDir dir;
  const SynthConfig c = testing::tiny_config();  // d = 32, 2 kv heads, P = 64, T = 96
  const auto runs = testing::replay_synth(
      c, {"hf_quantized:backend=quanto,bits=4,group=32,residual=8"}, dir, testing::every_step());
  const int64_t d = c.head_dim, hkv = c.kv_heads;
  ASSERT_FALSE(runs[0].kv.empty());
  for (const auto& k : runs[0].kv) {
    const int64_t n = k.step + 1, fp16 = (k.step - 64) % 8 + 1, quantized = n - fp16;
    EXPECT_EQ(k.data_bits, 2 * d * (quantized * 4 + fp16 * 16)) << "step " << k.step;
    EXPECT_EQ(k.meta_bits, k.kv_head == 0 ? 2 * hkv * quantized * d / 32 * 32 : 0)
        << "step " << k.step;
  }
}

TEST(HfQuantized, RefusesEvictionAndBadParameters) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();
  try {
    (void)testing::replay_synth(c, {"streamingllm:window=16+hf_quantized"}, dir);
    FAIL() << "eviction accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("keeps every token"), std::string::npos) << e.what();
  }
  EXPECT_NE(testing::spec_error("hf_quantized:backend=quanto,bits=3").find("2, 4"),
            std::string::npos);
  EXPECT_NE(testing::spec_error("hf_quantized:backend=hqq,k_axis=-1").find("0 or 1"),
            std::string::npos);
}

}  // namespace
}  // namespace kvsim
