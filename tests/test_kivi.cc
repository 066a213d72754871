// KIVI: a hand-worked case (codes, reconstructions, residual sizes, bits), the
// residual flush rules and memory to the bit at every decode step, the paper's
// properties on synthetic traces, composition after eviction, bad parameters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <iostream>
#include <map>
#include <set>

#include "test_util.h"

namespace kvsim {
namespace {

using testing::mean_key_err;
using testing::mean_rel_err;
using testing::TempDir;

// Keys and values of 1 KV head, rows [T, d].
LayerData hand_layer(const std::vector<std::vector<float>>& k,
                     const std::vector<std::vector<float>>& v) {
  LayerData l;
  l.slot = 0;
  l.num_tokens = static_cast<int>(k.size());
  l.head_dim = static_cast<int>(k[0].size());
  for (const auto& row : k) l.k.insert(l.k.end(), row.begin(), row.end());
  for (const auto& row : v) l.v.insert(l.v.end(), row.begin(), row.end());
  l.q.assign(l.k.size(), 0.f);
  return l;
}

std::unique_ptr<StoreStage> make_store(const std::string& spec, const TraceMeta& meta,
                                       const LayerData& layer, ShardContext& ctx) {
  ctx = testing::hand_context(meta, {&layer}, 1, layer.num_tokens);
  return std::move(Pipeline::create(PolicySpec::parse(spec), ctx, {}).store);
}

std::vector<float> row(const std::vector<float>& flat, size_t r, size_t d) {
  return {flat.begin() + r * d, flat.begin() + (r + 1) * d};
}

// d = 4, G = 4, R = 4, 2 bits. Prefill of 6 tokens.
//   keys t0..t3 per channel (one group of 4 tokens):
//     ch0 [0, .5, 1.5, 3]  min 0, scale 1: codes [0,0,2,3] (ties to even)  -> [0,0,2,3]
//     ch1 [1, 1, 1, 1]     constant: scale 0, codes 0                       -> [1,1,1,1]
//     ch2 [-2, 0, 2, 4]    min -2, scale 2: codes [0,1,2,3]                 -> exact
//     ch3 [0, 1, 2, 6]     min 0, scale 2: x/2 = 0, .5, 1, 3: codes [0,0,1,3]   -> [0,0,2,6]
//   keys t4, t5 stay fp16 (6 mod 4 = 2 residual keys).
//   values: all but the last 4 are quantized: t0, t1, per token (one group of 4 channels):
//     v0 [0, 1, 2, 9]  min 0, scale 3: codes [0,0,1,3] -> [0,0,3,9]
//     v1 [4, 3, 2, 1]  min 1, scale 1: exact
TEST(Kivi, HandWorkedCodesResidualAndBits) {
  const TraceMeta meta = testing::hand_meta(4);
  std::vector<std::vector<float>> k = {{0, 1, -2, 0},  {0.5, 1, 0, 1}, {1.5, 1, 2, 2}, {3, 1, 4, 6},
                                       {7, 7, 7, 7},   {8, 8, 8, 8},   {9, 9, 9, 9},   {1, 2, 3, 4},
                                       {5, 6, 7, 8.5}, {0, 0, 0, 0}};
  std::vector<std::vector<float>> v = {{0, 1, 2, 9}, {4, 3, 2, 1}, {1, 1, 1, 2}, {0, 0, 0, 3},
                                       {2, 2, 2, 2}, {5, 5, 5, 5}, {6, 6, 6, 6}, {7, 7, 7, 7},
                                       {8, 8, 8, 8}, {9, 9, 9, 9}};
  const LayerData layer = hand_layer(k, v);
  ShardContext ctx;
  auto store = make_store("kivi:bits=2,group=4,residual=4", meta, layer, ctx);
  HeadCache cache;
  cache.head_dim = 4;
  const std::vector<int32_t> prompt = {0, 1, 2, 3, 4, 5};
  store->insert(0, 0, cache, prompt, layer, /*prefill=*/true);
  ASSERT_EQ(cache.size(), 6u);
  const std::vector<std::vector<float>> want_k = {{0, 1, -2, 0}, {0, 1, 0, 0}, {2, 1, 2, 2},
                                                  {3, 1, 4, 6},  {7, 7, 7, 7}, {8, 8, 8, 8}};
  for (size_t t = 0; t < 6; ++t) EXPECT_EQ(row(cache.keys, t, 4), want_k[t]) << "key " << t;
  EXPECT_EQ(row(cache.values, 0, 4), (std::vector<float>{0, 0, 3, 9}));
  EXPECT_EQ(row(cache.values, 1, 4), (std::vector<float>{4, 3, 2, 1}));
  for (size_t t = 2; t < 6; ++t) EXPECT_EQ(row(cache.values, t, 4), v[t]) << "value " << t;
  // keys: 4 quantized x 4 ch x 2 b + 2 residual x 4 x 16; one group: 4 ch x 32.
  // values: 2 quantized x 4 x 2 + 4 residual x 4 x 16; 2 tokens x 1 group x 32.
  MemoryBits m = store->memory(0, 0);
  EXPECT_EQ(m.data, 4 * 4 * 2 + 2 * 4 * 16 + 2 * 4 * 2 + 4 * 4 * 16);
  EXPECT_EQ(m.meta, 4 * 32 + 2 * 32);

  // Decode t6, t7: the key residual grows to 3, then 4 (no flush before attention);
  // the value FIFO stays at 4 (t2, then t3 quantized).
  for (int32_t t : {6, 7})
    store->insert(0, 0, cache, std::span<const int32_t>(&t, 1), layer, false);
  EXPECT_EQ(row(cache.keys, 7, 4), k[7]);  // residual keys are exact
  EXPECT_EQ(row(cache.keys, 4, 4), k[4]);
  // v2 = [1,1,1,2]: min 1, scale fp16(1/3) = 0.333251953125, 2 -> code 3 -> 1.999755859375
  const float third = 0.333251953125f;
  EXPECT_EQ(row(cache.values, 2, 4), (std::vector<float>{1, 1, 1, 1 + 3 * third}));
  m = store->memory(0, 0);
  EXPECT_EQ(m.data, 4 * 4 * 2 + 4 * 4 * 16 + 4 * 4 * 2 + 4 * 4 * 16);
  EXPECT_EQ(m.meta, 1 * 4 * 32 + 4 * 32);

  // t8: the full residual (t4..t7) is quantized as one group before t8 joins it.
  //   ch0 [7, 8, 9, 1]: min 1, scale fp16(8/3) = 2.666015625; 7 -> 2.2505 -> 2 -> 6.33203125
  int32_t t8 = 8;
  store->insert(0, 0, cache, std::span<const int32_t>(&t8, 1), layer, false);
  const float s = 2.666015625f;
  EXPECT_EQ(cache.keys[4 * 4 + 0], 1 + 2 * s);
  EXPECT_EQ(cache.keys[7 * 4 + 0], 1.f);
  EXPECT_EQ(row(cache.keys, 8, 4), k[8]);
  m = store->memory(0, 0);
  EXPECT_EQ(m.data, 8 * 4 * 2 + 1 * 4 * 16 + 5 * 4 * 2 + 4 * 4 * 16);
  EXPECT_EQ(m.meta, 2 * 4 * 32 + 5 * 32);

  // Eviction: t4 (quantized key of group 2, quantized value) and t8 (residual
  // key, residual value) leave; group 2 keeps its metadata (t5..t7 live).
  const std::vector<int32_t> gone = {4, 8};
  cache.remove(gone);
  store->removed(0, 0, cache, gone);
  m = store->memory(0, 0);
  EXPECT_EQ(m.data, 7 * 4 * 2 + 0 * 4 * 16 + 4 * 4 * 2 + 3 * 4 * 16);
  EXPECT_EQ(m.meta, 2 * 4 * 32 + 4 * 32);
  // Group 1 (t0..t3) dies with its last token: its metadata is freed.
  const std::vector<int32_t> first = {0, 1, 2, 3};
  cache.remove(first);
  store->removed(0, 0, cache, first);
  m = store->memory(0, 0);
  EXPECT_EQ(m.data, 3 * 4 * 2 + 0 * 4 * 2 + 3 * 4 * 16);
  EXPECT_EQ(m.meta, 1 * 4 * 32);
}

// KIVI's bits at a decode step with n tokens (no eviction), r_k residual keys
// and r_v residual values.
struct KiviBits {
  int64_t data, meta;
};
KiviBits kivi_formula(int64_t n, int64_t r_k, int64_t r_v, int64_t d, int64_t b, int64_t G) {
  EXPECT_EQ((n - r_k) % G, 0);
  return {(n - r_k) * d * b + r_k * d * 16 + (n - r_v) * d * b + r_v * d * 16,
          (n - r_k) / G * d * 32 + (n - r_v) * (d / G) * 32};
}

TEST(Kivi, ResidualFlushRulesAndMemoryToTheBit) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();  // d = 32, 4 layers, 2 kv heads
  c.prompt_len = 10;
  c.tokens = 24;
  const int64_t d = c.head_dim;
  const auto runs =
      testing::replay_synth(c,
                            {"kivi:bits=2,group=2,residual=4", "kivi:bits=4,group=8,residual=8",
                             "kivi:bits=2,group=2,residual=4,v_flush=lazy", "kivi"},
                            dir, testing::every_step());
  // T = 10, R = 4, G = 2: after prefill 8 keys quantized, 2 residual; the
  // residual when attention runs at t = 10, 11, 12, ...: 3, 4, 1, 2, 3, 4, 1, ...
  const std::vector<int64_t> want_rk = {3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4};
  size_t checked = 0;
  for (const auto& k : runs[0].kv) {
    const int64_t n = k.step + 1;
    const int64_t r_k = want_rk[k.step - 10];
    EXPECT_EQ(r_k, (n - 1) % 4 + 1);
    const KiviBits want = kivi_formula(n, r_k, std::min<int64_t>(n, 4), d, 2, 2);
    EXPECT_EQ(k.data_bits, want.data) << "step " << k.step;
    EXPECT_EQ(k.meta_bits, want.meta) << "step " << k.step;
    ++checked;
  }
  EXPECT_EQ(checked, 14u * 4 * 2);    // every step, layer and kv head
  for (const auto& k : runs[1].kv) {  // T = 10, R = 8: 8 quantized keys, 2 residual
    const int64_t n = k.step + 1;
    const KiviBits want = kivi_formula(n, (n - 1) % 8 + 1, std::min<int64_t>(n, 8), d, 4, 8);
    EXPECT_EQ(k.data_bits, want.data) << "step " << k.step;
    EXPECT_EQ(k.meta_bits, want.meta) << "step " << k.step;
  }
  for (const auto& k : runs[2].kv) {  // official timing: R + 1 fp16 values at attention
    const int64_t n = k.step + 1;
    const KiviBits want = kivi_formula(n, (n - 1) % 4 + 1, std::min<int64_t>(n, 5), d, 2, 2);
    EXPECT_EQ(k.data_bits, want.data) << "step " << k.step;
    EXPECT_EQ(k.meta_bits, want.meta) << "step " << k.step;
  }
  for (const auto& k : runs[3].kv) {  // R = 128 > T: everything fp16
    EXPECT_EQ(k.data_bits, k.fp16_bits);
    EXPECT_EQ(k.meta_bits, 0);
    EXPECT_EQ(k.key_err, 0.f);
  }
}

TEST(Kivi, PrefillMultipleOfResidualQuantizesEveryKey) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();
  c.prompt_len = 16;
  c.tokens = 20;
  const auto runs =
      testing::replay_synth(c, {"kivi:bits=2,group=4,residual=8"}, dir, testing::every_step());
  for (const auto& k : runs[0].kv) {
    const int64_t n = k.step + 1;  // 16 keys quantized at prefill, then 1, 2, 3, 4 residual
    const KiviBits want = kivi_formula(n, n - 16, 8, c.head_dim, 2, 4);
    EXPECT_EQ(k.data_bits, want.data) << "step " << k.step;
    EXPECT_EQ(k.meta_bits, want.meta) << "step " << k.step;
  }
}

TEST(Kivi, PerChannelKeysBeatPerTokenKeysAtTwoBits) {
  TempDir dir;
  // Same G = 32, same 2 bits; KIVI's residual kept minimal (R = G) so that the
  // comparison is about the key axis, not about fp16 tokens.
  const auto runs = testing::replay_synth(
      testing::small_synth(),
      {"kivi:bits=2,group=32,residual=32", "uniform:bits=2,group=32,k_axis=token"}, dir);
  const double kivi_k = mean_key_err(runs[0]), token_k = mean_key_err(runs[1]);
  const double kivi_e = mean_rel_err(runs[0]), token_e = mean_rel_err(runs[1]);
  EXPECT_LT(kivi_k, 0.6 * token_k) << "key err: kivi " << kivi_k << " per-token " << token_k;
  EXPECT_LT(kivi_e, token_e) << "rel err: kivi " << kivi_e << " per-token " << token_e;
  std::cout << "[kivi] 2-bit key_err per-channel(kivi R=32) " << kivi_k << " per-token " << token_k
            << "; rel_err " << kivi_e << " vs " << token_e << "\n";
}

TEST(Kivi, ErrorFallsWithBitsAndResidual) {
  TempDir dir;
  const auto runs = testing::replay_synth(
      testing::small_synth(),
      {"kivi:bits=2,residual=32", "kivi:bits=4,residual=32", "kivi:bits=2,residual=128"}, dir);
  const double e2 = mean_rel_err(runs[0]), e4 = mean_rel_err(runs[1]), e2r = mean_rel_err(runs[2]);
  EXPECT_LT(e4, 0.5 * e2) << "2 bits " << e2 << " 4 bits " << e4;
  EXPECT_LT(e2r, e2) << "R=32 " << e2 << " R=128 " << e2r;
  std::cout << "[kivi] rel_err 2-bit R=32 " << e2 << ", 4-bit R=32 " << e4 << ", 2-bit R=128 "
            << e2r << "\n";
}

// Reference: KIVI's bits over the tokens streamingllm keeps, simulated step by
// step from the flush rules (independent of the store's code).
TEST(Kivi, AfterStreamingLlmCountsExactlyTheKeptTokens) {
  TempDir dir;
  SynthConfig c = testing::small_synth();
  c.model_layers = 2;
  const int64_t d = c.head_dim, P = c.prompt_len, S = 4, W = 60, R = 32, G = 8, b = 2;
  const auto runs =
      testing::replay_synth(c, {"streamingllm:sinks=4,window=60+kivi:bits=2,group=8,residual=32"},
                            dir, testing::every_step());

  auto kept_at = [&](int64_t t) {
    std::set<int32_t> kept;
    for (int64_t p = 0; p <= t; ++p) {
      if (p < S || p > t - W) kept.insert(static_cast<int32_t>(p));
    }
    return kept;
  };
  // Reference state.
  std::deque<int32_t> key_res, val_res;
  std::vector<std::set<int32_t>> key_groups;
  std::set<int32_t> val_quant;
  auto flush_keys = [&](size_t count) {
    for (size_t i = 0; i < count; i += G) {
      key_groups.emplace_back(key_res.begin(), key_res.begin() + G);
      key_res.erase(key_res.begin(), key_res.begin() + G);
    }
  };
  auto arrive = [&](int32_t p) {
    key_res.push_back(p);
    val_res.push_back(p);
  };
  const std::set<int32_t> prefill = kept_at(P - 1);
  for (int32_t p : prefill) arrive(p);
  flush_keys(key_res.size() - key_res.size() % R);
  while (static_cast<int64_t>(val_res.size()) > R) {
    val_quant.insert(val_res.front());
    val_res.pop_front();
  }
  std::set<int32_t> present = prefill;
  std::map<int64_t, std::pair<int64_t, int64_t>> want;  // step -> (data, meta)
  for (int64_t t = P; t < c.tokens; ++t) {
    const std::set<int32_t> kept = kept_at(t);
    for (int32_t p : present) {
      if (kept.count(p)) continue;
      auto drop = [p](std::deque<int32_t>& q) {
        auto it = std::find(q.begin(), q.end(), p);
        if (it != q.end()) q.erase(it);
      };
      drop(key_res);
      drop(val_res);
      for (auto& g : key_groups) g.erase(p);
      val_quant.erase(p);
    }
    if (static_cast<int64_t>(key_res.size()) >= R) flush_keys(key_res.size() - key_res.size() % R);
    arrive(static_cast<int32_t>(t));
    while (static_cast<int64_t>(val_res.size()) > R) {
      val_quant.insert(val_res.front());
      val_res.pop_front();
    }
    present = kept;
    int64_t key_quant = 0, groups = 0;
    for (const auto& g : key_groups) {
      key_quant += static_cast<int64_t>(g.size());
      groups += g.empty() ? 0 : 1;
    }
    const auto kr = static_cast<int64_t>(key_res.size()), vr = static_cast<int64_t>(val_res.size());
    const auto vq = static_cast<int64_t>(val_quant.size());
    ASSERT_EQ(key_quant + kr, static_cast<int64_t>(kept.size()));
    want[t] = {key_quant * d * b + kr * d * 16 + vq * d * b + vr * d * 16,
               groups * d * 32 + vq * (d / G) * 32};
  }
  ASSERT_EQ(runs[0].kv.size(), want.size() * 2 * 2);
  for (const auto& k : runs[0].kv) {
    ASSERT_EQ(k.kept_tokens, S + W);
    EXPECT_EQ(k.data_bits, want[k.step].first) << "step " << k.step;
    EXPECT_EQ(k.meta_bits, want[k.step].second) << "step " << k.step;
  }
}

// After per-head evict stages (whichever are built): every kept token is a
// quantized or a residual token, so data = kept*d*2b + (r_k + r_v)*d*(16 - b)
// with 0 <= r_k, r_v <= R.
TEST(Kivi, ComposesAfterPerHeadEvictionAndMerging) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();
  const int64_t d = c.head_dim, b = 2, R = 16;
  std::vector<std::string> specs;
  for (const char* evict : {"h2o", "l2norm", "snapkv", "random"}) {
    if (PolicyRegistry::instance().find(evict)) {
      specs.push_back(std::string(evict) + "+kivi:bits=2,group=8,residual=16");
    }
  }
  if (PolicyRegistry::instance().find("minicache")) {
    specs.push_back("minicache:start=0+kivi:bits=4,group=8,residual=16");
  }
  if (specs.empty()) GTEST_SKIP() << "no evict or merge stage built";
  const auto runs = testing::replay_synth(c, specs, dir, testing::every_step());
  for (size_t i = 0; i < runs.size(); ++i) {
    EXPECT_GT(mean_rel_err(runs[i]), 0) << specs[i];
    for (const auto& s : runs[i].steps) ASSERT_TRUE(std::isfinite(s.rel_err)) << specs[i];
    if (specs[i].rfind("minicache", 0) == 0) continue;
    for (const auto& k : runs[i].kv) {
      const int64_t extra = k.data_bits - k.kept_tokens * d * 2 * b;
      ASSERT_EQ(extra % (d * (16 - b)), 0) << specs[i] << " step " << k.step;
      EXPECT_GE(extra / (d * (16 - b)), 0) << specs[i];
      EXPECT_LE(extra / (d * (16 - b)), 2 * R) << specs[i];
      EXPECT_LE(k.kept_tokens, k.step + 1) << specs[i];  // l2norm skips layers 0, 1
    }
  }
  std::cout << "[kivi] composed:";
  for (size_t i = 0; i < runs.size(); ++i)
    std::cout << " " << specs[i] << " " << mean_rel_err(runs[i]);
  std::cout << "\n";
}

TEST(Kivi, RefusesBadParameters) {
  EXPECT_THROW(PolicySpec::parse("kivi:group=32,residual=48"), ConfigError);  // R % G != 0
  EXPECT_THROW(PolicySpec::parse("kivi:bits=0"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("kivi:bits=9"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("kivi:residual=0"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("kivi:v_flush=later"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("kivi+uniform"), ConfigError);       // two quantizers
  EXPECT_THROW(PolicySpec::parse("kivi+streamingllm"), ConfigError);  // evict after quantize
  const TraceMeta meta = synth_meta(testing::tiny_config());          // head_dim 32
  EXPECT_THROW(PolicySpec::parse("kivi:group=64,residual=128").check_against(meta), ConfigError);
  EXPECT_THROW(PolicySpec::parse("kivi:group=12,residual=24").check_against(meta), ConfigError);
  EXPECT_NO_THROW(PolicySpec::parse("kivi:group=16,residual=32").check_against(meta));
  EXPECT_NO_THROW(PolicySpec::parse("streamingllm+kivi:bits=4"));
}

}  // namespace
}  // namespace kvsim
