// MiKV: hand-worked precision split and memory, balancer and paper properties.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "policies/quantizer.h"
#include "sim/results.h"
#include "test_util.h"

namespace kvsim {
namespace {

using testing::mean_rel_err;
using testing::TempDir;

// One layer, one KV head, one query head, d = 4, a 10-token prompt.
struct HandCase {
  TraceMeta meta = testing::hand_meta(4);
  LayerData layer;
  ShardContext ctx;
  HandCase() {
    layer.num_tokens = 10;
    layer.head_dim = 4;
    for (int t = 0; t < 10; ++t) {
      for (int c = 0; c < 4; ++c) {
        layer.q.push_back(1.f);
        layer.k.push_back(static_cast<float>(t + c) * 0.25f - 1.f);
        layer.v.push_back(static_cast<float>((t * 3 + c) % 7) * 0.5f);
      }
    }
    ctx = testing::hand_context(meta, {&layer}, 10, 10);
  }

  // Runs the prefill of `pipe` over the 10 tokens, whose attention column sums make
  // tokens 3 and 5 the heavy hitters; returns the cache.
  HeadCache prefill(Pipeline& pipe) const {
    const std::vector<int32_t> positions = testing::range(0, 10);
    const std::vector<float> attention = {0.1f, 0.2f, 0.1f, 3.0f, 0.1f, 2.0f, 0.3f, 0.2f, 9.f, 9.f};
    pipe.store->observe_prefill(0, 0, positions, attention);
    HeadCache cache;
    cache.head_dim = 4;
    pipe.store->insert(0, 0, cache, positions, layer, /*prefill=*/true);
    return cache;
  }
};

TEST(MiKV, HandWorkedImportanceSplitAndMemory) {
  HandCase hc;
  // heavy = recent = 0.2 of P = 10 -> 2 heavy hitters + 2 recent at fp16.
  Pipeline pipe = Pipeline::create(
      PolicySpec::parse("mikv:heavy=0.2,recent=0.2,lo_bits=2,balance=false"), hc.ctx, {});
  const HeadCache cache = hc.prefill(pipe);
  ASSERT_EQ(cache.size(), 10u);  // nothing evicted
  for (int t = 0; t < 10; ++t) {
    const bool high = t == 3 || t == 5 || t == 8 || t == 9;
    std::vector<float> want_k(hc.layer.key(0, t), hc.layer.key(0, t) + 4);
    std::vector<float> want_v(hc.layer.value(0, t), hc.layer.value(0, t) + 4);
    if (!high) {  // per-token 2-bit, one group of 4 channels
      quantize_group(want_k.data(), 4, 1, 2, want_k.data(), 1);
      quantize_group(want_v.data(), 4, 1, 2, want_v.data(), 1);
    }
    for (int c = 0; c < 4; ++c) {
      EXPECT_EQ(cache.key_row(t)[c], want_k[c]) << "token " << t;
      EXPECT_EQ(cache.value_row(t)[c], want_v[c]) << "token " << t;
    }
  }
  // 4 tokens fp16: 2*16*4 each; 6 tokens 2-bit: 2*2*4 data + 2*32 meta each;
  // precision map: 10 bits.
  const MemoryBits m = pipe.store->memory(0, 0);
  EXPECT_EQ(m.data, 4 * 2 * 16 * 4 + 6 * 2 * 2 * 4);
  EXPECT_EQ(m.meta, 6 * 2 * 32 + 10);
}

// With hi_bits < 16, a prompt token demoted at prefill is quantized from its 16-bit
// original at lo_bits, not from a hi_bits copy (no double quantization); the tokens
// kept important are stored at hi_bits.
TEST(MiKV, PromptTokensDemotedAtPrefillAreQuantizedFromTheOriginals) {
  HandCase hc;
  Pipeline pipe = Pipeline::create(
      PolicySpec::parse("mikv:heavy=0.2,recent=0.2,hi_bits=4,lo_bits=2,balance=false"), hc.ctx, {});
  const HeadCache cache = hc.prefill(pipe);
  int differs_from_double = 0;
  for (int t = 0; t < 10; ++t) {
    const bool high = t == 3 || t == 5 || t == 8 || t == 9;
    for (const bool keys : {true, false}) {
      const float* x = keys ? hc.layer.key(0, t) : hc.layer.value(0, t);
      std::vector<float> want(x, x + 4), twice(x, x + 4);
      quantize_group(want.data(), 4, 1, high ? 4 : 2, want.data(), 1);
      quantize_group(twice.data(), 4, 1, 4, twice.data(), 1);
      quantize_group(twice.data(), 4, 1, 2, twice.data(), 1);
      const float* got = keys ? cache.key_row(t) : cache.value_row(t);
      for (int c = 0; c < 4; ++c) {
        EXPECT_EQ(got[c], want[c]) << "token " << t << (keys ? " key" : " value");
        differs_from_double += !high && twice[c] != want[c];
      }
    }
  }
  // The case tells the two apart: quantizing the 4-bit copy gives other values.
  EXPECT_GT(differs_from_double, 0);
}

TEST(MiKV, BalancerScalesAreSqrtOfQueryOverKeyRange) {
  HandCase hc;
  // Channel 0 of every key is 8x larger; queries are 1: s_0 = sqrt(1/max|k_0|).
  for (int t = 0; t < 10; ++t) hc.layer.k[t * 4] *= 8;
  Pipeline with =
      Pipeline::create(PolicySpec::parse("mikv:heavy=0,recent=0.1,lo_bits=2"), hc.ctx, {});
  Pipeline without = Pipeline::create(
      PolicySpec::parse("mikv:heavy=0,recent=0.1,lo_bits=2,balance=false"), hc.ctx, {});
  std::vector<int32_t> positions(10);
  for (int i = 0; i < 10; ++i) positions[i] = i;
  HeadCache a, b;
  a.head_dim = b.head_dim = 4;
  with.store->insert(0, 0, a, positions, hc.layer, /*prefill=*/true);
  without.store->insert(0, 0, b, positions, hc.layer, /*prefill=*/true);
  // q.k error of the low-precision tokens is smaller with the balancer.
  double err_with = 0, err_without = 0;
  for (int t = 0; t < 9; ++t) {
    double exact = 0, qa = 0, qb = 0;
    for (int c = 0; c < 4; ++c) {
      exact += hc.layer.key(0, t)[c];
      qa += a.key_row(t)[c];
      qb += b.key_row(t)[c];
    }
    err_with += std::fabs(qa - exact);
    err_without += std::fabs(qb - exact);
  }
  EXPECT_LT(err_with, err_without);
  // Memory: the balancer adds 16 bits per channel.
  EXPECT_EQ(with.store->memory(0, 0).meta, without.store->memory(0, 0).meta + 16 * 4);
}

TEST(MiKV, NoTokenEvictedAndErrorFallsWithLowBits) {
  TempDir dir;
  const auto runs = testing::replay_synth(
      testing::small_synth(), {"mikv:lo_bits=2", "mikv:lo_bits=3", "mikv:lo_bits=4"}, dir);
  for (const auto& r : runs) {
    for (const auto& k : r.kv) EXPECT_EQ(k.kept_tokens, k.step + 1);
    for (const auto& s : r.steps) EXPECT_NEAR(s.mass_retained, 1.f, 1e-5);
  }
  EXPECT_GT(mean_rel_err(runs[0]), mean_rel_err(runs[1]));
  EXPECT_GT(mean_rel_err(runs[1]), mean_rel_err(runs[2]));
}

// Memory from the paper's definition, worked by hand for the small synthetic
// trace (P = 256 prompt tokens, T = 320, d = 64), heavy = recent = 0.1, 3-bit
// low precision in groups of 32 channels, fp16 high precision, balancer on.
// Per (layer, kv head), K and V alike:
//   high tokens: ceil(0.1 * 256) = 26 heavy + 26 recent = 52, 16 bits per element;
//   low tokens:  the other n - 52, 3 bits per element, and per group of 32
//                channels an fp16 scale and zero point (2 groups x 32 bits);
//   precision map: 1 bit per token held; balancer: 64 channels x 16 bits.
// First decode step (n = 257, 205 low tokens):
//   data = 52*64*16*2 + 205*64*3*2 = 106496 + 78720 = 185216
//   meta = 205*2*2*32 + 257 + 1024 = 26240 + 257 + 1024 = 27521
// Last step (n = 320, 268 low tokens):
//   data = 106496 + 268*64*3*2 = 106496 + 102912 = 209408
//   meta = 268*2*2*32 + 320 + 1024 = 34304 + 320 + 1024 = 35648
// In between, each step adds one low token: +384 data bits, +129 meta bits.
TEST(MiKV, MemoryMatchesThePapersDefinitionToTheBit) {
  TempDir dir;
  const auto runs = testing::replay_synth(testing::small_synth(),
                                          {"mikv:heavy=0.1,recent=0.1,lo_bits=3,group=32"}, dir,
                                          testing::every_step());
  std::map<std::pair<int, int>, const KvRecord*> previous;  // (layer, kv head) -> last record
  int checked_ends = 0;
  for (const auto& k : runs[0].kv) {
    if (k.step == 256) {
      EXPECT_EQ(k.data_bits, 185216);
      EXPECT_EQ(k.meta_bits, 27521);
      ++checked_ends;
    }
    if (k.step == 319) {
      EXPECT_EQ(k.data_bits, 209408);
      EXPECT_EQ(k.meta_bits, 35648);
      ++checked_ends;
    }
    const KvRecord*& before = previous[{k.layer, k.kv_head}];
    if (before != nullptr) {
      ASSERT_EQ(k.step, before->step + 1);
      EXPECT_EQ(k.data_bits - before->data_bits, 384) << k.step;
      EXPECT_EQ(k.meta_bits - before->meta_bits, 129) << k.step;
    }
    before = &k;
  }
  EXPECT_EQ(checked_ends, 2 * 4 * 2);  // both ends of 4 layers x 2 kv heads
}

}  // namespace
}  // namespace kvsim

namespace kvsim {
namespace {

// The paper's claim: at the same memory, keeping the unimportant tokens at low
// precision beats evicting them. H2O is given at least MiKV's memory.
TEST(MiKV, BeatsH2oAtEqualMemory) {
  testing::TempDir dir;
  const SynthConfig c = testing::small_synth();
  const auto mikv = testing::replay_synth(c, {"mikv:heavy=0.05,recent=0.05,lo_bits=2"}, dir);
  const RunSummary ms = summarize(mikv[0]);
  // H2O memory ratio ~ (heavy + recent) * P / (t + 1); give it MiKV's ratio at
  // the last step plus a margin, split evenly between heavy and recent.
  const double frac = ms["memory_ratio"] * c.tokens / c.prompt_len / 2 + 0.01;
  const std::string h2o = "h2o:heavy=" + std::to_string(frac) + ",recent=" + std::to_string(frac);
  const auto h = testing::replay_synth(c, {h2o}, dir);
  const RunSummary hs = summarize(h[0]);
  EXPECT_GE(hs["memory_ratio"], ms["memory_ratio"]) << h2o;
  RecordProperty("mikv_rel_err", std::to_string(ms["rel_err_mean"]));
  RecordProperty("h2o_rel_err", std::to_string(hs["rel_err_mean"]));
  EXPECT_LT(ms["rel_err_mean"], hs["rel_err_mean"])
      << "mikv " << ms["rel_err_mean"] << " at ratio " << ms["memory_ratio"] << "; " << h2o << " "
      << hs["rel_err_mean"] << " at ratio " << hs["memory_ratio"];
}

}  // namespace
}  // namespace kvsim
