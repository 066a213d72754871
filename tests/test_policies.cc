// Baseline policies replayed on synthetic traces: fidelity properties and
// memory checked to the bit against closed forms.
#include <gtest/gtest.h>

#include <map>

#include "test_util.h"

namespace kvsim {
namespace {

using testing::mean_key_err;
using testing::mean_rel_err;
using testing::TempDir;

SynthConfig small() {
  SynthConfig c = synth_preset("default");
  c.model_layers = 4;
  c.tokens = 320;
  c.prompt_len = 256;
  return c;
}

TEST(Full, ZeroErrorEverywhere) {
  TempDir dir;
  const auto runs = testing::replay_synth(small(), {"full"}, dir);
  ASSERT_FALSE(runs[0].steps.empty());
  for (const auto& s : runs[0].steps) {
    EXPECT_EQ(s.rel_err, 0.f);
    EXPECT_FLOAT_EQ(s.cosine, 1.f);
    // Mass and KL are sums of float exponentials: exact up to float rounding.
    EXPECT_NEAR(s.mass_retained, 1.f, 2e-6);
    EXPECT_NEAR(s.kl, 0.f, 2e-6);
  }
  for (const auto& k : runs[0].kv) {
    EXPECT_EQ(k.key_err, 0.f);
    EXPECT_EQ(k.value_err, 0.f);
    EXPECT_EQ(k.data_bits, k.fp16_bits);  // exactly the fp16 cache
    EXPECT_EQ(k.meta_bits, 0);
  }
}

TEST(Uniform, EightBitsSmallTwoBitsLarge) {
  TempDir dir;
  const auto runs =
      testing::replay_synth(small(), {"uniform:bits=8", "uniform:bits=4", "uniform:bits=2"}, dir);
  const double e8 = mean_rel_err(runs[0]), e4 = mean_rel_err(runs[1]), e2 = mean_rel_err(runs[2]);
  EXPECT_LT(e8, 0.01) << e8;
  EXPECT_GT(e2, 0.1) << e2;
  EXPECT_LT(e8, e4);
  EXPECT_LT(e4, e2);
}

TEST(Uniform, PerChannelKeysBeatPerTokenOnOutlierChannels) {
  TempDir dir;
  const auto runs = testing::replay_synth(
      small(), {"uniform:bits=2,k_axis=token", "uniform:bits=2,k_axis=channel"}, dir);
  EXPECT_LT(mean_key_err(runs[1]), 0.7 * mean_key_err(runs[0]))
      << "per-channel " << mean_key_err(runs[1]) << " per-token " << mean_key_err(runs[0]);
  EXPECT_LT(mean_rel_err(runs[1]), mean_rel_err(runs[0]));
}

// Closed forms, per (layer, kv head) at a measured step with n cached tokens.
TEST(Memory, MatchesClosedFormsToTheBit) {
  TempDir dir;
  SynthConfig c = small();
  const int64_t d = c.head_dim;
  ReplayOptions all;
  all.measure = MeasureRule::parse("all");
  const auto runs = testing::replay_synth(
      c,
      {"full", "uniform:bits=2,group=32", "uniform:bits=3,group=16,k_axis=channel",
       "streamingllm:sinks=4,window=60", "streamingllm:sinks=4,window=60+uniform:bits=4,group=64"},
      dir, all);
  for (const auto& k : runs[0].kv) {
    const int64_t n = k.step + 1;
    ASSERT_EQ(k.kept_tokens, n);
    EXPECT_EQ(k.data_bits, 2 * 16 * d * n);
  }
  for (const auto& k : runs[1].kv) {  // per token, both sides: b*d + 32*(d/G) per token
    const int64_t n = k.step + 1;
    EXPECT_EQ(k.data_bits, 2 * n * d * 2);
    EXPECT_EQ(k.meta_bits, 2 * n * (d / 32) * 32);
  }
  for (const auto& k : runs[2].kv) {  // keys per channel in groups of 16 tokens, values per token
    const int64_t n = k.step + 1, quantized = n / 16 * 16, pending = n % 16;
    EXPECT_EQ(k.data_bits, quantized * d * 3 + pending * d * 16 + n * d * 3) << k.step;
    EXPECT_EQ(k.meta_bits, (n / 16) * d * 32 + n * (d / 16) * 32) << k.step;
  }
  for (const auto& k : runs[3].kv) {
    const int64_t n = std::min<int64_t>(k.step + 1, 4 + 60);
    ASSERT_EQ(k.kept_tokens, n);
    EXPECT_EQ(k.data_bits, 2 * 16 * d * n);
    EXPECT_EQ(k.meta_bits, 0);
  }
  for (const auto& k : runs[4].kv) {
    const int64_t n = 64;
    ASSERT_EQ(k.kept_tokens, n);
    EXPECT_EQ(k.data_bits, 2 * 4 * d * n);
    EXPECT_EQ(k.meta_bits, 2 * n * (d / 64) * 32);
  }
}

TEST(StreamingLlm, KeepsSinksAndRecentWindowOnly) {
  TempDir dir;
  SynthConfig c = small();
  ReplayOptions all;
  all.measure = MeasureRule::parse("all");
  const auto runs = testing::replay_synth(c, {"streamingllm:sinks=4,window=28"}, dir, all);
  for (const auto& k : runs[0].kv) EXPECT_EQ(k.kept_tokens, 32);
  // The kept set holds the sinks, whose attention mass is large: far more than
  // 32 tokens' uniform share.
  double mass = 0;
  for (const auto& s : runs[0].steps) mass += s.mass_retained;
  mass /= runs[0].steps.size();
  EXPECT_GT(mass, 0.5);
  EXPECT_LT(mass, 1.0);
  for (const auto& s : runs[0].steps) EXPECT_GE(s.kl, 0.f);
}

TEST(StreamingLlm, SinksMatterOnSyntheticSinks) {
  TempDir dir;
  const auto runs = testing::replay_synth(
      small(), {"streamingllm:sinks=4,window=60", "streamingllm:sinks=0,window=64"}, dir);
  EXPECT_LT(mean_rel_err(runs[0]), mean_rel_err(runs[1]));
}

}  // namespace
}  // namespace kvsim
