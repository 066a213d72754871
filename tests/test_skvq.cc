// SKVQ: the clipped quantizer and fp8 rounding by hand, ternary counting,
// k-means on hand-made channel ranges, the [sink | quantized | window] layout,
// memory to the bit, held-out calibration (leave-one-out, files), the paper's
// properties (reordering and clipping lower the error) and composition.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <iostream>

#include "policies/clipped_quantizer.h"
#include "policies/skvq_calibration.h"
#include "sim/base/rng.h"
#include "sim/calibration.h"
#include "sim/skvq_calibration_io.h"
#include "test_util.h"
#include "trace/synth.h"

namespace kvsim {
namespace {

using testing::mean_key_err;
using testing::mean_rel_err;
using testing::TempDir;

// ---------------------------------------------------------------------------
// The quantizer by hand.

TEST(SkvqQuantizer, HandWorkedClippedGroupSaturates) {
  // a = 0.75: gmin = -6, gmax = 6. 2 bits: scale 12/3 = 4, zp = -6.
  // (x + 6)/4 = -0.5 -> 0 (saturated), 1, 1.5 -> 2 (tie to even), 1.75 and 2.25 -> 2,
  // 3.5 -> 3 (saturated).
  const float x[6] = {-8, -2, 0, 1, 3, 8};
  float hat[6];
  uint8_t codes[6];
  ClippedGroup g = clipped_quantize(x, 6, 3, 0.75f, MetaFormat::kFp16, hat, codes);
  EXPECT_EQ(g.scale, 4.f);
  EXPECT_EQ(g.zp, -6.f);
  const uint8_t want_codes[6] = {0, 1, 2, 2, 2, 3};
  const float want_hat[6] = {-6, -2, 2, 2, 2, 6};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(codes[i], want_codes[i]) << i;
    EXPECT_EQ(hat[i], want_hat[i]) << i;
  }
  // Ternary (1.5 bits, max_int 2): scale 6; (x + 6)/6 = -1/3 -> 0, 2/3 -> 1, 1, 7/6 -> 1,
  // 1.5 -> 2 (tie to even), 7/3 -> 2.
  g = clipped_quantize(x, 6, BitWidth::parse(1.5, "t").max_int, 0.75f, MetaFormat::kFp8, hat,
                       codes);
  EXPECT_EQ(g.scale, 6.f);
  const uint8_t tern_codes[6] = {0, 1, 1, 1, 2, 2};
  const float tern_hat[6] = {-6, 0, 0, 0, 6, 6};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(codes[i], tern_codes[i]) << i;
    EXPECT_EQ(hat[i], tern_hat[i]) << i;
  }
}

TEST(SkvqQuantizer, Fp8MetadataAndScaleFloor) {
  // a = 1, 2 bits: scale 3.3/3 = 1.1 -> e4m3 1.125 (step 1/8 in [1, 2)); codes against the
  // stored scale: 1/1.125 = .89 -> 1, 1.78 -> 2, 2.93 -> 3.
  const float x[4] = {0, 1, 2, 3.3f};
  float hat[4];
  uint8_t codes[4];
  const ClippedGroup g = clipped_quantize(x, 4, 3, 1.f, MetaFormat::kFp8, hat, codes);
  EXPECT_EQ(g.scale, 1.125f);
  EXPECT_EQ(g.zp, 0.f);
  const float want[4] = {0, 1.125f, 2.25f, 3.375f};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(codes[i], i);
    EXPECT_EQ(hat[i], want[i]);
  }
  // A constant group: scale floored at 1e-5 (fp16 keeps it, fp8 rounds it to 0); no NaN.
  const float flat[3] = {0.5f, 0.5f, 0.5f};
  const ClippedGroup g16 = clipped_quantize(flat, 3, 3, 1.f, MetaFormat::kFp16, hat);
  EXPECT_EQ(g16.scale, 1.0013580322265625e-05f);  // fp16(1e-5), a subnormal
  for (float h : std::span<float>(hat, 3)) EXPECT_EQ(h, 0.5f);
  const ClippedGroup g8 = clipped_quantize(flat, 3, 3, 1.f, MetaFormat::kFp8, hat);
  EXPECT_EQ(g8.scale, 0.f);
  for (float h : std::span<float>(hat, 3)) EXPECT_EQ(h, 0.5f);  // e4m3(0.5) = 0.5
}

TEST(SkvqQuantizer, E4m3RoundingByHand) {
  EXPECT_EQ(round_to_e4m3(0.f), 0.f);
  EXPECT_EQ(round_to_e4m3(0.3f), 0.3125f);  // step 2^-5 in [0.25, 0.5): 9.6 -> 10
  EXPECT_EQ(round_to_e4m3(-0.3f), -0.3125f);
  EXPECT_EQ(round_to_e4m3(17.f), 16.f);    // step 2: 8.5 -> 8 (tie to even)
  EXPECT_EQ(round_to_e4m3(19.f), 20.f);    // 9.5 -> 10 (tie to even)
  EXPECT_EQ(round_to_e4m3(232.f), 224.f);  // step 16: 14.5 -> 14
  EXPECT_EQ(round_to_e4m3(240.f), 240.f);
  EXPECT_EQ(round_to_e4m3(448.f), 448.f);  // the largest finite e4m3fn
  EXPECT_EQ(round_to_e4m3(470.f), 448.f);  // saturates (would round to 480)
  EXPECT_EQ(round_to_e4m3(-1e6f), -448.f);
  EXPECT_EQ(round_to_e4m3(std::ldexp(1.f, -9)), std::ldexp(1.f, -9));       // smallest subnormal
  EXPECT_EQ(round_to_e4m3(3 * std::ldexp(1.f, -10)), std::ldexp(1.f, -8));  // 1.5 steps -> 2
  EXPECT_EQ(round_to_e4m3(std::ldexp(1.f, -11)), 0.f);
  EXPECT_EQ(round_to_e4m3(1e-5f), 0.f);
  EXPECT_EQ(round_to_e4m3(7.5f * std::ldexp(1.f, -9)), std::ldexp(1.f, -6));  // 7.5 -> 8 steps
}

TEST(SkvqQuantizer, BitWidthsAndTernaryCounting) {
  const BitWidth t = BitWidth::parse(1.5, "v_bits");
  EXPECT_TRUE(t.ternary());
  EXPECT_EQ(t.max_int, 2);
  EXPECT_EQ(t.packed_bits, 2);
  EXPECT_DOUBLE_EQ(t.ideal_bits, std::log2(3.0));
  const BitWidth four = BitWidth::parse(4, "k_bits");
  EXPECT_EQ(four.max_int, 15);
  EXPECT_EQ(four.packed_bits, 4);
  EXPECT_THROW(BitWidth::parse(1.7, "v_bits"), ConfigError);
  EXPECT_THROW(BitWidth::parse(2.5, "v_bits"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("skvq:v_bits=1.7"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("skvq:k_bits=9"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("skvq:k_bits=0.5"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("skvq:meta=fp4"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("skvq:clip=0"), ConfigError);
  EXPECT_THROW(PolicySpec::parse("skvq:clip=1.2"), ConfigError);
  EXPECT_NO_THROW(PolicySpec::parse("skvq:k_bits=2,v_bits=1.5"));
  const TraceMeta meta = synth_meta(testing::tiny_config());                 // 2 kv heads x 32
  EXPECT_THROW(PolicySpec::parse("skvq").check_against(meta), ConfigError);  // 128 > 32
  EXPECT_THROW(PolicySpec::parse("skvq:group=12").check_against(meta), ConfigError);
  EXPECT_NO_THROW(PolicySpec::parse("skvq:group=32").check_against(meta));
  EXPECT_NO_THROW(PolicySpec::parse("skvq:group=64,scope=layer").check_against(meta));
}

// ---------------------------------------------------------------------------
// k-means on hand-made channel ranges.

TEST(SkvqKmeans, HandMadeChannelRangesGiveTheExpectedClusters) {
  // 12 channels, interleaved: i % 3 == 0 near (-1, 1), == 1 near (-5, 5), == 2 near (-0.2, 3).
  std::vector<float> mn(12), mx(12);
  for (int i = 0; i < 12; ++i) {
    const float jitter = 0.01f * static_cast<float>(i);
    const float lo[3] = {-1, -5, -0.2f}, hi[3] = {1, 5, 3};
    mn[i] = lo[i % 3] - jitter;
    mx[i] = hi[i % 3] + jitter;
  }
  std::vector<double> x(mn.begin(), mn.end()), y(mx.begin(), mx.end());
  const std::vector<int> labels = skvq_kmeans(x, y, 3);
  for (int i = 0; i < 12; ++i) {
    // Clusters numbered by range: (-1,1) -> 0, (-0.2,3) -> 1, (-5,5) -> 2.
    const int want[3] = {0, 2, 1};
    EXPECT_EQ(labels[i], want[i % 3]) << "channel " << i;
  }
  const SkvqGrouping g = skvq_group_channels(mn, mx, 4, true);
  EXPECT_EQ(g.perm, (std::vector<int32_t>{0, 3, 6, 9, 2, 5, 8, 11, 1, 4, 7, 10}));
  EXPECT_EQ(g.starts, (std::vector<int32_t>{0, 4, 8, 12}));
  // Without reordering: contiguous groups.
  const SkvqGrouping plain = skvq_group_channels(mn, mx, 4, false);
  EXPECT_EQ(plain.perm, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(plain.starts, (std::vector<int32_t>{0, 4, 8, 12}));
}

TEST(SkvqKmeans, GroupSizesFollowTheClusters) {
  // 8 channels, two outliers (3 and 6): 8/4 = 2 clusters of sizes 6 and 2.
  std::vector<float> mn = {-1, -1.1f, -0.9f, -9, -1, -1.05f, -9.5f, -0.95f};
  std::vector<float> mx = {1, 1.1f, 0.9f, 9, 1.02f, 1, 9.2f, 1};
  const SkvqGrouping g = skvq_group_channels(mn, mx, 4, true);
  EXPECT_EQ(g.perm, (std::vector<int32_t>{0, 1, 2, 4, 5, 7, 3, 6}));
  EXPECT_EQ(g.starts, (std::vector<int32_t>{0, 6, 8}));
  // Duplicated points: more clusters than distinct points; empty clusters are dropped.
  const std::vector<double> same = {1, 1, 1, 1};
  EXPECT_EQ(skvq_kmeans(same, same, 2), (std::vector<int>{0, 0, 0, 0}));
}

// ---------------------------------------------------------------------------
// The [sink | quantized | window] layout on a hand-made head.

LayerData ramp_layer(int tokens, int d) {
  LayerData l;
  l.slot = 0;
  l.num_tokens = tokens;
  l.head_dim = d;
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < d; ++c) {
      l.k.push_back(static_cast<float>((t + 1) * (c % 2 ? -1 : 1)) + 0.37f * c);
      l.v.push_back(static_cast<float>(t) * 0.25f - 0.61f * c);
    }
  }
  l.q.assign(l.k.size(), 0.f);
  return l;
}

// One hand-made head (d = 4) of `tokens` ramp tokens and the store of `spec`.
struct RampHead {
  static constexpr int d = 4;
  TraceMeta meta = testing::hand_meta(d);
  LayerData layer;
  ShardContext ctx;
  Pipeline pipe;
  HeadCache cache;
  RampHead(int tokens, const std::string& spec) : layer(ramp_layer(tokens, d)) {
    ctx = testing::hand_context(meta, {&layer}, 0, tokens);
    pipe = Pipeline::create(PolicySpec::parse(spec), ctx, {});
    cache.head_dim = d;
  }
  RampHead(const RampHead&) = delete;
  RampHead& operator=(const RampHead&) = delete;
};

TEST(SkvqLayout, SinksQuantizedWindowAndEviction) {
  RampHead head(12, "skvq:reorder=false,group=4,sinks=2,window=3,clip=1");
  const int d = RampHead::d;
  const LayerData& layer = head.layer;
  StoreStage& store = *head.pipe.store;
  HeadCache& cache = head.cache;
  const std::vector<int32_t> prompt = {0, 1, 2, 3, 4, 5, 6, 7};
  store.insert(0, 0, cache, prompt, layer, /*prefill=*/true);
  auto is_raw = [&](int32_t pos) {
    const int64_t r = cache.find(pos);
    return std::equal(cache.key_row(r), cache.key_row(r) + d, layer.key(0, pos)) &&
           std::equal(cache.value_row(r), cache.value_row(r) + d, layer.value(0, pos));
  };
  auto is_quantized = [&](int32_t pos) {
    float k[4], v[4];
    clipped_quantize(layer.key(0, pos), d, 3, 1.f, MetaFormat::kFp16, k);
    clipped_quantize(layer.value(0, pos), d, 3, 1.f, MetaFormat::kFp16, v);
    const int64_t r = cache.find(pos);
    return std::equal(k, k + d, cache.key_row(r)) && std::equal(v, v + d, cache.value_row(r)) &&
           !is_raw(pos);
  };
  // [0 1 | 2 3 4 | 5 6 7]
  for (int32_t p : {0, 1, 5, 6, 7}) EXPECT_TRUE(is_raw(p)) << p;
  for (int32_t p : {2, 3, 4}) EXPECT_TRUE(is_quantized(p)) << p;
  // fp16: 5 tokens x 2 sides x 4 x 16; quantized: 3 x 4 x (2 + 2); meta: 3 x 2 groups x 32.
  EXPECT_EQ(store.memory(0, 0).data, 5 * 128 + 3 * 16);
  EXPECT_EQ(store.memory(0, 0).meta, 3 * 2 * 32);
  EXPECT_LT(store.memory(0, 0).ideal_data, 0);  // = data (no ternary)

  int32_t t = 8;  // the oldest window token (5) is quantized: [0 1 | 2..5 | 6 7 8]
  store.insert(0, 0, cache, std::span<const int32_t>(&t, 1), layer, false);
  EXPECT_TRUE(is_quantized(5));
  EXPECT_TRUE(is_raw(8));
  EXPECT_EQ(store.memory(0, 0).data, 5 * 128 + 4 * 16);
  EXPECT_EQ(store.memory(0, 0).meta, 4 * 2 * 32);

  // Evict a sink, a quantized and a window token: [1 | 2 4 5 | 6 8]; the sink is not refilled.
  const std::vector<int32_t> gone = {0, 3, 7};
  cache.remove(gone);
  store.removed(0, 0, cache, gone);
  EXPECT_EQ(store.memory(0, 0).data, 3 * 128 + 3 * 16);
  EXPECT_EQ(store.memory(0, 0).meta, 3 * 2 * 32);
  t = 9;  // the window refills before it quantizes: [1 | 2 4 5 | 6 8 9]
  store.insert(0, 0, cache, std::span<const int32_t>(&t, 1), layer, false);
  EXPECT_TRUE(is_raw(6));
  EXPECT_EQ(store.memory(0, 0).data, 4 * 128 + 3 * 16);
  t = 10;  // [1 | 2 4 5 6 | 8 9 10]
  store.insert(0, 0, cache, std::span<const int32_t>(&t, 1), layer, false);
  EXPECT_TRUE(is_quantized(6));
  EXPECT_EQ(store.memory(0, 0).data, 4 * 128 + 4 * 16);
  EXPECT_EQ(store.memory(0, 0).meta, 4 * 2 * 32);
  store.insert(0, 0, cache, {}, layer, false);  // a new token evicted on arrival: nothing changes
  EXPECT_EQ(store.memory(0, 0).data, 4 * 128 + 4 * 16);
}

TEST(SkvqLayout, ShortPromptFillsTheSinksFirst) {
  RampHead head(10, "skvq:reorder=false,group=2,sinks=5,window=2,k_bits=4,v_bits=1.5");
  const int d = RampHead::d;
  StoreStage& store = *head.pipe.store;
  const std::vector<int32_t> prompt = {0, 1, 2};
  store.insert(0, 0, head.cache, prompt, head.layer, /*prefill=*/true);
  for (int32_t t = 3; t < 9; ++t)
    store.insert(0, 0, head.cache, std::span(&t, 1), head.layer, false);
  // [0..4 | 5 6 | 7 8]: two quantized tokens; K 4 bits, V ternary (2 bits packed, log2 3 ideal).
  const MemoryBits m = store.memory(0, 0);
  EXPECT_EQ(m.data, 7 * 128 + 2 * d * (4 + 2));
  EXPECT_EQ(m.meta, 2 * (2 + 2) * 32);  // d/2 = 2 groups per side
  EXPECT_DOUBLE_EQ(m.ideal_data, 7 * 128 + 2 * d * (4 + std::log2(3.0)));
}

// ---------------------------------------------------------------------------
// Memory to the bit on synthetic traces, at every decode step.

struct Layout {
  int64_t fp16, quantized;
};
Layout layout(int64_t n, int64_t sinks, int64_t window) {
  const int64_t s = std::min(n, sinks);
  const int64_t w = std::min(std::max<int64_t>(n - sinks, 0), window);
  return {s + w, n - s - w};
}

TEST(SkvqMemory, MatchesTheFormulaToTheBit) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();  // d = 32, 2 kv heads, P = 64, T = 96
  const int64_t d = c.head_dim;
  const auto runs = testing::replay_synth(
      c,
      {"skvq:reorder=false,group=8,window=16,sinks=5",
       "skvq:reorder=false,group=32,window=8,sinks=2,k_bits=4,v_bits=1.5,meta=fp8",
       "skvq:reorder=false,group=64,scope=layer,window=8,k_bits=3", "skvq:group=32,window=8"},
      dir, testing::every_step());
  for (const auto& k : runs[0].kv) {  // 2 + 2 bits, 4 groups a side, fp16 metadata
    const Layout l = layout(k.step + 1, 5, 16);
    EXPECT_EQ(k.data_bits, l.fp16 * 2 * d * 16 + l.quantized * d * (2 + 2)) << k.step;
    EXPECT_EQ(k.meta_bits, l.quantized * 2 * (d / 8) * 2 * 16) << k.step;
    EXPECT_DOUBLE_EQ(k.ideal_bits, static_cast<double>(k.data_bits + k.meta_bits));
  }
  for (const auto& k : runs[1].kv) {  // K 4 bits, V ternary, 1 group a side, fp8 metadata
    const Layout l = layout(k.step + 1, 2, 8);
    EXPECT_EQ(k.data_bits, l.fp16 * 2 * d * 16 + l.quantized * d * (4 + 2)) << k.step;
    EXPECT_EQ(k.meta_bits, l.quantized * 2 * 1 * 2 * 8) << k.step;
    const double ideal = static_cast<double>(l.fp16 * 2 * d * 16) +
                         static_cast<double>(l.quantized * d) * (4 + std::log2(3.0)) +
                         static_cast<double>(k.meta_bits);
    EXPECT_NEAR(k.ideal_bits, ideal, 1e-6) << k.step;
    EXPECT_LT(k.ideal_bits, static_cast<double>(k.data_bits + k.meta_bits));
  }
  // scope=layer, g = 64 = both heads' channels: one group per token spans the two heads;
  // its (scale, zp) are counted on KV head 0 (the group's lowest channel).
  for (const auto& k : runs[2].kv) {
    const Layout l = layout(k.step + 1, 5, 8);
    EXPECT_EQ(k.data_bits, l.fp16 * 2 * d * 16 + l.quantized * d * (3 + 2)) << k.step;
    EXPECT_EQ(k.meta_bits, k.kv_head == 0 ? l.quantized * 2 * 2 * 16 : 0) << k.step;
  }
  // reorder=true with one group per head reorders nothing: no calibration (this trace has a
  // single sequence), no index.
  for (const auto& k : runs[3].kv) {
    const Layout l = layout(k.step + 1, 5, 8);
    EXPECT_EQ(k.data_bits, l.fp16 * 2 * d * 16 + l.quantized * d * 4) << k.step;
    EXPECT_EQ(k.meta_bits, l.quantized * 2 * 32) << k.step;
  }
}

// ---------------------------------------------------------------------------
// A trace whose channel statistics belong to the model, shared by every
// sequence, as calibration assumes (synth traces redraw their outlier channels
// and channel means per sequence). `seed` changes the sequences only, so two
// seeds give two traces of the same model. Post-RoPE keys with 4 outlier
// channels per head and a log-normal spread of channel scales; values with a
// spread of channel scales and 2 outlier channels.
void write_model_trace(const std::string& path, int sequences, uint64_t seed, int tokens = 256,
                       int prompt = 192) {
  TraceMeta m;
  m.model_name = "skvq-test-model";
  m.num_model_layers = 2;
  m.layer_ids = {0, 1};
  m.sliding_window = {0, 0};
  m.num_q_heads = 4;
  m.num_kv_heads = 2;
  m.head_dim = 64;
  m.attn_scale = 0.125;
  m.rope_theta = 10000;
  const int L = 2, Hq = 4, Hkv = 2, d = 64, group = Hq / Hkv;
  TraceWriter writer(path, m, {StoredDType::kFloat16, 0});
  for (int s = 0; s < sequences; ++s) {
    const size_t plane = static_cast<size_t>(tokens) * d;
    std::vector<float> q(L * Hq * plane), k(L * Hkv * plane), v(L * Hkv * plane);
    for (int l = 0; l < L; ++l) {
      for (int h = 0; h < Hkv; ++h) {
        Rng model(derive_seed(0xC0FFEE, l, h));  // the "weights": same for every trace
        std::vector<float> kscale(d), kmean(d), vscale(d);
        for (int c = 0; c < d; ++c) {
          kscale[c] = static_cast<float>(std::exp(0.5 * model.normal()));
          kmean[c] = static_cast<float>(0.5 * model.normal());
          vscale[c] = static_cast<float>(std::exp(0.6 * model.normal()));
        }
        for (int n = 0; n < 4; ++n) {
          const int c = static_cast<int>(model.below(d / 2));
          kscale[c] = 8;
          kmean[c] = 4;
        }
        for (int n = 0; n < 2; ++n) vscale[model.below(d)] = 5;
        Rng rng(derive_seed(seed, s, l, h));
        std::vector<double> z(d), y(d);
        for (int c = 0; c < d; ++c) {
          z[c] = rng.normal();
          y[c] = rng.normal();
        }
        for (int t = 0; t < tokens; ++t) {
          float* key = k.data() + (l * Hkv + h) * plane + static_cast<size_t>(t) * d;
          float* value = v.data() + (l * Hkv + h) * plane + static_cast<size_t>(t) * d;
          for (int c = 0; c < d; ++c) {
            z[c] = 0.8 * z[c] + 0.6 * rng.normal();
            y[c] = 0.8 * y[c] + 0.6 * rng.normal();
            key[c] = static_cast<float>(kmean[c] + kscale[c] * z[c]);
            value[c] = static_cast<float>(vscale[c] * y[c]);
          }
          for (int j = 0; j < group; ++j) {
            float* query = q.data() + (l * Hq + h * group + j) * plane + static_cast<size_t>(t) * d;
            for (int c = 0; c < d; ++c) {
              query[c] = static_cast<float>(0.5 * z[c] / kscale[c] + 0.5 * rng.normal());
            }
            apply_rope(query, d, t, m.rope_theta);
          }
          apply_rope(key, d, t, m.rope_theta);
        }
      }
    }
    std::vector<int32_t> ids(tokens, 1);
    writer.add_sequence(ids, prompt, q, k, v);
  }
  writer.finish();
}

std::vector<RunResult> replay_file(const std::string& path, const std::vector<std::string>& specs,
                                   ReplayOptions options = {}) {
  TraceReader reader(path);
  std::vector<PolicySpec> parsed;
  for (const auto& s : specs) parsed.push_back(PolicySpec::parse(s));
  return replay(reader, parsed, options);
}

TEST(SkvqCalibration, ReorderedMemoryCountsGroupsAndIndex) {
  TempDir dir;
  const std::string path = dir.file("model.h5");
  write_model_trace(path, 2, 1, 64, 48);
  const std::string params = "group=16,window=8,sinks=5";
  const auto runs = replay_file(path, {"skvq:" + params}, testing::every_step());
  TraceReader reader(path);
  const int64_t d = 64;
  // Leave-one-out: sequence s is calibrated on the other one, exactly as calibrate_skvq does.
  const SkvqCalibration calib[2] = {calibrate_skvq(reader, {1}, parse_skvq_params(params)),
                                    calibrate_skvq(reader, {0}, parse_skvq_params(params))};
  int64_t unequal_groups = 0;
  for (const auto& k : runs[0].kv) {
    const SkvqGrouping& gk = calib[k.sequence].layers[k.layer].k[k.kv_head];
    const SkvqGrouping& gv = calib[k.sequence].layers[k.layer].v[k.kv_head];
    const int64_t groups = gk.groups() + gv.groups();
    const Layout l = layout(k.step + 1, 5, 8);
    EXPECT_EQ(k.data_bits, l.fp16 * 2 * d * 16 + l.quantized * d * 4);
    // per quantized token 2 x 16 bits a group; the int16 index: d + groups + 1 per side
    EXPECT_EQ(k.meta_bits, l.quantized * groups * 32 + 16 * (2 * d + groups + 2)) << k.step;
    for (int g = 0; g < gk.groups(); ++g) unequal_groups += gk.starts[g + 1] - gk.starts[g] != 16;
  }
  EXPECT_GT(unequal_groups, 0);  // k-means clusters: group sizes differ
}

// ---------------------------------------------------------------------------
// Properties: reordering and clipping each lower the error at equal bits.

TEST(SkvqProperties, ReorderingAndClippingLowerTheError) {
  TempDir dir;
  const std::string path = dir.file("model.h5");
  write_model_trace(path, 2, 7);
  // head_dim 64 in groups of 16 (4 groups per head), most tokens quantized.
  const std::string base = "skvq:k_bits=2,v_bits=2,group=16,window=16,sinks=5";
  const auto runs =
      replay_file(path, {base + ",reorder=false,clip=1", base + ",reorder=true,clip=1",
                         base + ",reorder=false,clip=0.92", base + ",reorder=true,clip=0.92",
                         base + ",reorder=true,clip_search=true"});
  double e[5], ke[5];
  for (int i = 0; i < 5; ++i) {
    e[i] = mean_rel_err(runs[i]);
    ke[i] = mean_key_err(runs[i]);
  }
  std::cout << "[skvq] rel_err / key_err: plain clip1 " << e[0] << " / " << ke[0]
            << "; reorder clip1 " << e[1] << " / " << ke[1] << "; plain clip.92 " << e[2] << " / "
            << ke[2] << "; reorder clip.92 " << e[3] << " / " << ke[3] << "; reorder search "
            << e[4] << " / " << ke[4] << "\n";
  EXPECT_LT(ke[1], 0.7 * ke[0]) << "reordering, clip 1: key_err " << ke[1] << " vs " << ke[0];
  EXPECT_LT(e[1], 0.7 * e[0]) << "reordering, clip 1: rel_err " << e[1] << " vs " << e[0];
  EXPECT_LT(e[3], 0.7 * e[2]) << "reordering, clip 0.92: rel_err " << e[3] << " vs " << e[2];
  EXPECT_LT(e[2], e[0]) << "clipping 0.92, no reordering: rel_err " << e[2] << " vs " << e[0];
  EXPECT_LT(e[3], e[1]) << "clipping 0.92, reordering: rel_err " << e[3] << " vs " << e[1];
  EXPECT_LT(e[4], e[1]) << "searched clipping, reordering: rel_err " << e[4] << " vs " << e[1];
}

// ---------------------------------------------------------------------------
// Calibration held out from the scored tokens.

TEST(SkvqCalibration, FileRoundTripAndLeaveOneOutAgree) {
  TempDir dir;
  const std::string path = dir.file("model.h5"), calib_path = dir.file("calib.h5");
  write_model_trace(path, 2, 3, 48, 40);
  TraceReader reader(path);
  const Params params = parse_skvq_params("group=16,clip_search=true,calib_tokens=32,window=4");
  const SkvqCalibration calib = calibrate_skvq(reader, {1}, params);
  save_skvq_calibration(calib_path, calib);
  EXPECT_FALSE(std::filesystem::exists(calib_path + ".tmp." + std::to_string(::getpid())));
  const SkvqCalibration back = load_skvq_calibration(calib_path, reader.meta());
  EXPECT_EQ(back.trace_id, reader.meta().trace_id);
  EXPECT_EQ(back.sequences, std::vector<int>{1});
  ASSERT_EQ(back.layers.size(), 2u);
  for (size_t l = 0; l < 2; ++l) {
    for (size_t h = 0; h < 2; ++h) {
      EXPECT_EQ(back.layers[l].k[h].perm, calib.layers[l].k[h].perm);
      EXPECT_EQ(back.layers[l].v[h].starts, calib.layers[l].v[h].starts);
      EXPECT_EQ(back.layers[l].k[h].clip, calib.layers[l].k[h].clip);
      EXPECT_EQ(back.layers[l].k[h].clip.size(),
                static_cast<size_t>(calib.layers[l].k[h].groups()));
    }
    EXPECT_EQ(back.stats[l].v_max, calib.stats[l].v_max);
  }
  // Sequence 0 scored with the file (calibrated on sequence 1) = leave-one-out.
  ReplayOptions seq0;
  seq0.sequences = {0};
  const std::string spec = "skvq:group=16,clip_search=true,calib_tokens=32,window=4";
  const auto loo = replay_file(path, {spec}, seq0);
  const auto file = replay_file(path, {spec + ",calib=" + calib_path}, seq0);
  ASSERT_EQ(loo[0].steps.size(), file[0].steps.size());
  for (size_t i = 0; i < loo[0].steps.size(); ++i) {
    EXPECT_EQ(loo[0].steps[i].rel_err, file[0].steps[i].rel_err);
  }
  // Scoring sequence 1 with a calibration made on sequence 1 is refused.
  ReplayOptions seq1;
  seq1.sequences = {1};
  EXPECT_THROW(replay_file(path, {spec + ",calib=" + calib_path}, seq1), ConfigError);
  // A calibration made with other grouping parameters is refused.
  EXPECT_THROW(replay_file(path, {"skvq:group=32,clip_search=true,calib=" + calib_path}, seq0),
               ConfigError);
}

TEST(SkvqCalibration, SingleSequenceNeedsAFileFromAnotherTrace) {
  TempDir dir;
  const std::string one = dir.file("one.h5"), other = dir.file("other.h5");
  const std::string calib_path = dir.file("calib.h5");
  write_model_trace(one, 1, 11, 40, 32);
  write_model_trace(other, 2, 12, 40, 32);
  try {
    replay_file(one, {"skvq:group=16"});
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("kvsim calibrate"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(replay_file(one, {"skvq:group=16,reorder=false"}));  // needs no calibration
  {
    TraceReader reader(other);
    save_skvq_calibration(calib_path,
                          calibrate_skvq(reader, {0, 1}, parse_skvq_params("group=16")));
  }
  // Another trace of the same model: sequence 0 of `one` is not a calibration token.
  const auto runs = replay_file(one, {"skvq:group=16,calib=" + calib_path});
  EXPECT_FALSE(runs[0].steps.empty());
}

TEST(SkvqCalibration, LoadValidatesShapesAndFormat) {
  TempDir dir;
  const std::string path = dir.file("model.h5"), calib_path = dir.file("calib.h5");
  write_model_trace(path, 2, 5, 40, 32);
  TraceReader reader(path);
  save_skvq_calibration(calib_path, calibrate_skvq(reader, {0}, parse_skvq_params("group=32")));
  EXPECT_NO_THROW(load_skvq_calibration(calib_path, reader.meta()));
  TraceMeta other = reader.meta();
  other.head_dim = 32;
  EXPECT_THROW(load_skvq_calibration(calib_path, other), FormatError);
  other = reader.meta();
  other.layer_ids = {0, 2};
  EXPECT_THROW(load_skvq_calibration(calib_path, other), FormatError);
  other = reader.meta();
  other.num_kv_heads = 1;
  EXPECT_THROW(load_skvq_calibration(calib_path, other), FormatError);
  EXPECT_THROW(load_skvq_calibration(path, reader.meta()), FormatError);  // a trace, not a calib
  EXPECT_THROW(load_skvq_calibration(dir.file("missing.h5"), reader.meta()), IoError);
  // Bad calibration inputs.
  EXPECT_THROW(calibrate_skvq(reader, {}, parse_skvq_params("group=32")), ConfigError);
  EXPECT_THROW(calibrate_skvq(reader, {2}, parse_skvq_params("group=32")), ConfigError);
  EXPECT_THROW(calibrate_skvq(reader, {0}, parse_skvq_params("group=48")), ConfigError);
  EXPECT_THROW(parse_skvq_params("groups=32"), ConfigError);
}

// ---------------------------------------------------------------------------
// Composition.

// Evicts a different prompt token in each KV head (head h drops position h + 1),
// as per-head evict stages (snapkv, h2o) do. Registered for these tests only.
class PerHeadEvict final : public EvictStage {
 public:
  void select(const ArrivalView& view, std::vector<int32_t>& evict) override {
    if (view.prefill) evict.push_back(view.kv_head + 1);
  }
};
PolicyInfo per_head_info() {
  PolicyInfo info;
  info.name = "test_per_head_evict";
  info.kind = StageKind::kEvict;
  info.summary = "tests only: evicts prompt position kv_head + 1 in each KV head";
  info.create = [](const Params&, const ShardContext&) { return std::make_unique<PerHeadEvict>(); };
  return info;
}
KVSIM_REGISTER_POLICY(per_head_info());

TEST(SkvqComposition, AfterEvictionCountsTheKeptTokens) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();
  const int64_t d = c.head_dim;
  const auto runs = testing::replay_synth(
      c,
      {"streamingllm:sinks=4,window=28+skvq:reorder=false,group=8,sinks=5,window=16",
       "streamingllm:sinks=4,window=28+skvq:reorder=false,group=64,scope=layer,window=16",
       "test_per_head_evict+skvq:reorder=false,group=8,window=16"},
      dir, testing::every_step());
  // streamingllm keeps 32 tokens: {0..3} and the last 28. The store's sinks are the first 5
  // it received at prefill (0..3 and 36); at the first decode step streamingllm evicts 36,
  // a store sink, which is not replaced. From then on: 4 sinks + 16 window fp16, 12 quantized.
  for (const auto& k : runs[0].kv) {
    ASSERT_EQ(k.kept_tokens, 32);
    EXPECT_EQ(k.data_bits, 20 * 2 * d * 16 + 12 * d * 4) << k.step;
    EXPECT_EQ(k.meta_bits, 12 * 2 * 4 * 32) << k.step;
  }
  // Every head keeps the same tokens: scope=layer composes.
  for (const auto& k : runs[1].kv) {
    EXPECT_EQ(k.meta_bits, k.kv_head == 0 ? 12 * 2 * 32 : 0) << k.step;
  }
  for (const auto& k : runs[2].kv) {  // one prompt token fewer per head
    ASSERT_EQ(k.kept_tokens, k.step);
    const Layout l = layout(k.kept_tokens, 5, 16);
    EXPECT_EQ(k.data_bits, l.fp16 * 2 * d * 16 + l.quantized * d * 4) << k.step;
  }
  // Per-head eviction and scope=layer: refused, with the reason.
  try {
    testing::replay_synth(c, {"test_per_head_evict+skvq:reorder=false,group=64,scope=layer"}, dir);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("scope=head"), std::string::npos) << e.what();
  }
}

// snapkv evicts at prefill only, so the layout follows the kept count exactly;
// the other stages (whichever are built) must run and give finite errors.
TEST(SkvqComposition, ComposesWithOtherStagesWhenRegistered) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();
  c.sequences = 2;  // leave-one-out calibration
  std::vector<std::string> specs;
  for (const char* stage : {"snapkv", "h2o", "l2norm", "minicache:start=0"}) {
    const std::string name = std::string(stage).substr(0, std::string(stage).find(':'));
    if (PolicyRegistry::instance().find(name))
      specs.push_back(std::string(stage) + "+skvq:group=8,window=16");
  }
  if (specs.empty()) GTEST_SKIP() << "no evict or merge stage built";
  const auto runs = testing::replay_synth(c, specs, dir);
  for (size_t i = 0; i < runs.size(); ++i) {
    for (const auto& s : runs[i].steps) ASSERT_TRUE(std::isfinite(s.rel_err)) << specs[i];
    std::cout << "[skvq] " << specs[i] << " rel_err " << mean_rel_err(runs[i]) << "\n";
    if (specs[i].rfind("snapkv", 0) != 0) continue;
    for (const auto& k : runs[i].kv) {
      const Layout l = layout(k.kept_tokens, 5, 16);
      EXPECT_EQ(k.data_bits, l.fp16 * 2 * c.head_dim * 16 + l.quantized * c.head_dim * 4);
    }
  }
}

}  // namespace
}  // namespace kvsim
