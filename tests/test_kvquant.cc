// KVQuant: a hand-worked key and value (thresholds from a held-out sequence, outliers, LUT
// codes) with its bits; the pre-RoPE mode undoing and re-applying the rotation; 1-D k-means;
// memory to the bit over a replay with eviction; the paper's claims on the embedded SmolLM2
// trace (pre-RoPE < post-RoPE key error, outliers and nuq lower it); bad input.
#include <gtest/gtest.h>

#include <cmath>

#include "policies/kmeans.h"
#include "policies/rope.h"
#include "policies/skvq_calibration.h"
#include "sim/base/fp16.h"
#include "test_util.h"

namespace kvsim {
namespace {

using testing::mean_key_err;
using testing::TempDir;

// Sequences held in memory: calibration reads them as it reads a trace.
class MemorySource final : public CalibrationSource {
 public:
  MemorySource(TraceMeta meta, std::vector<LayerData> layers) : meta_(std::move(meta)) {
    for (auto& l : layers) {
      sequences_.push_back({l.num_tokens, l.num_tokens});
      layers_.push_back(std::move(l));
    }
  }
  const TraceMeta& meta() const override { return meta_; }
  int num_sequences() const override { return static_cast<int>(layers_.size()); }
  const SequenceInfo& sequence(int i) const override { return sequences_.at(i); }
  LayerData read_layer(int sequence, int) const override { return layers_.at(sequence); }
  SkvqCalibration load_skvq_calibration(const std::string&) const override {
    throw ConfigError("none");
  }
  const LayerData& layer(int s) const { return layers_.at(s); }

 private:
  TraceMeta meta_;
  std::vector<SequenceInfo> sequences_;
  std::vector<LayerData> layers_;
};

LayerData one_head(const std::vector<std::vector<float>>& k,
                   const std::vector<std::vector<float>>& v) {
  LayerData l;
  l.num_tokens = static_cast<int>(k.size());
  l.head_dim = static_cast<int>(k[0].size());
  for (const auto& r : k) l.k.insert(l.k.end(), r.begin(), r.end());
  for (const auto& r : v) l.v.insert(l.v.end(), r.begin(), r.end());
  l.q.assign(l.k.size(), 0.f);
  return l;
}

struct Built {
  std::vector<std::shared_ptr<const PolicyState>> prepared;
  ShardContext ctx;
  Pipeline pipeline;
};

// Builds `spec`'s store for sequence 0 of `source`, calibrated on the others.
std::unique_ptr<Built> build(const std::string& spec, const MemorySource& source) {
  auto b = std::make_unique<Built>();
  const PolicySpec parsed = PolicySpec::parse(spec);
  b->prepared = prepare_policy(parsed, source);
  b->ctx = testing::hand_context(source.meta(), {&source.layer(0)}, 1, source.layer(0).num_tokens);
  b->ctx.prepared = b->prepared[0];
  b->pipeline = Pipeline::create(parsed, b->ctx, b->prepared);
  return b;
}

// d = 4, b = 1, nuq=false: the LUT is {-1, 1}. tau = 0.5: thresholds at the 25% and 75%
// quantiles. Held-out sequence 1 has keys 0, 1, 2, 3, 4 in every channel: l = 1, u = 3, so
// mid 2 and half-range 1.
//   key [0.5, 1.4, 2.6, 3.5]: 0.5 < 1 and 3.5 > 3 are outliers (kept); 1.4 -> -0.6 -> -1 -> 1;
//   2.6 -> 0.6 -> 1 -> 3. So [0.5, 1, 3, 3.5], 2 outliers.
//   value [0, 1.2, 1.9, 10]: quantiles 0.75 -> 1.9 + 0.25 * 8.1 = 3.925, 0.25 -> 0.9; 0 and 10
//   are outliers; the median (lower middle) 1.2 replaces them: min 1.2, max 1.9, offset
//   fp16(1.55), range fp16(0.35); 1.2 -> -1, 1.9 -> +1.
// Sequence 0's own keys (all 100) would move the thresholds if they were used.
TEST(Kvquant, HandWorkedKeyValueAndBits) {
  TraceMeta meta = testing::hand_meta(4);
  meta.rope_type = "none";
  std::vector<std::vector<float>> calib_k, calib_v;
  for (float x : {0.f, 1.f, 2.f, 3.f, 4.f}) {
    calib_k.push_back({x, x, x, x});
    calib_v.push_back({x, -x, x, 1});
  }
  const MemorySource source(meta, {one_head({{0.5f, 1.4f, 2.6f, 3.5f}, {100, 100, 100, 100}},
                                            {{0, 1.2f, 1.9f, 10}, {1, 2, 3, 4}}),
                                   one_head(calib_k, calib_v)});
  auto b = build("kvquant:bits=1,tau=0.5,nuq=false", source);
  HeadCache cache;
  cache.head_dim = 4;
  b->pipeline.store->insert(0, 0, cache, std::vector<int32_t>{0}, source.layer(0), true);
  EXPECT_EQ(std::vector<float>(cache.keys.begin(), cache.keys.end()),
            (std::vector<float>{0.5f, 1, 3, 3.5f}));
  const float offset = round_to_half(1.55f), range = round_to_half(0.35f);
  EXPECT_EQ(std::vector<float>(cache.values.begin(), cache.values.end()),
            (std::vector<float>{0, offset - range, offset + range, 10}));
  const MemoryBits m = b->pipeline.store->memory(0, 0);
  // codes 2 x 4 x 1 b; 4 outliers x 16 b; meta: 4 x 32 b indices, 2 pointers, offset+range.
  EXPECT_EQ(m.data, 2 * 4 * 1 + 4 * 16);
  EXPECT_EQ(m.meta, 4 * 32 + 2 * 32 + 32);
  std::map<std::string, double> counters;
  b->pipeline.store->report(counters);
  EXPECT_EQ(counters["kvquant.outliers_k"], 2);
  EXPECT_EQ(counters["kvquant.outliers_v"], 2);
  EXPECT_EQ(counters["kvquant.elements"], 8);
  // Evicting the token frees every bit.
  b->pipeline.store->removed(0, 0, cache, std::vector<int32_t>{0});
  EXPECT_EQ(b->pipeline.store->memory(0, 0).total(), 0);
}

// With RoPE, the key is quantized before it: k^ = R_p(Q(R_p^-1 k)). Calibration keys are
// rotated copies of pre-RoPE keys 0..4 per channel, so the pre-RoPE thresholds are 1 and 3
// as above, and the scored key at position 2 comes back as R_2 [0.5, 1, 3, 3.5].
TEST(Kvquant, PreRopeUndoesAndReappliesTheRotation) {
  TraceMeta meta = testing::hand_meta(4);
  meta.rope_theta = 16;
  const Rope rope = Rope::for_slot(meta, 0);
  std::vector<std::vector<float>> calib_k, calib_v, k0(3, std::vector<float>(4, 0.f));
  for (int t = 0; t < 5; ++t) {
    std::vector<float> x(4, static_cast<float>(t));
    rope.apply(x.data(), t, false);
    calib_k.push_back(x);
    calib_v.push_back({1, 2, 3, 4});
  }
  k0[2] = {0.5f, 1.4f, 2.6f, 3.5f};
  rope.apply(k0[2].data(), 2, false);
  const MemorySource source(
      meta, {one_head(k0, {{1, 2, 3, 4}, {1, 2, 3, 4}, {1, 2, 3, 4}}), one_head(calib_k, calib_v)});
  auto b = build("kvquant:bits=1,tau=0.5,nuq=false", source);
  HeadCache cache;
  cache.head_dim = 4;
  b->pipeline.store->insert(0, 0, cache, std::vector<int32_t>{2}, source.layer(0), true);
  std::vector<float> want = {0.5f, 1, 3, 3.5f};
  rope.apply(want.data(), 2, false);
  for (int c = 0; c < 4; ++c) {
    // The input key was rounded to fp16 (a 16-bit cache) and thresholds to fp16.
    EXPECT_NEAR(cache.keys[c], want[c], 2e-3f) << "channel " << c;
  }
  // prerope=false quantizes the rotated key against post-RoPE thresholds: another result.
  auto post = build("kvquant:bits=1,tau=0.5,nuq=false,prerope=false", source);
  HeadCache cache2;
  cache2.head_dim = 4;
  post->pipeline.store->insert(0, 0, cache2, std::vector<int32_t>{2}, source.layer(0), true);
  EXPECT_NE(cache2.keys, cache.keys);
}

TEST(Kvquant, KmeansOneDimensional) {
  const auto c = kmeans_1d({-1.0, -0.9, 0.9, 1.0, -0.95, 0.95}, 2);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_DOUBLE_EQ(c[0], -0.95);
  EXPECT_DOUBLE_EQ(c[1], 0.95);
  const auto three = kmeans_1d({0, 0, 0, 5, 5, 9}, 3);
  EXPECT_EQ(three, (std::vector<double>{0, 5, 9}));
}

// Memory at every step equals the per-token formula summed over the kept tokens, after
// StreamingLLM evicts (sinks 2 kept in fp16).
TEST(Kvquant, MemoryToTheBitAfterEviction) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();
  c.sequences = 2;
  ReplayOptions options = testing::every_step();
  options.sequences = {0};
  const auto runs = testing::replay_synth(
      c, {"streamingllm:window=6,sinks=2+kvquant:bits=2,sinks=2", "kvquant:bits=2,sinks=2"}, dir,
      options);
  std::map<std::string, double> counters = runs[1].counters;
  const double outliers = counters["kvquant.outliers_k"] + counters["kvquant.outliers_v"];
  ASSERT_GT(outliers, 0);
  for (const RunResult& r : runs) {
    for (const auto& k : r.kv) {
      const int64_t d = c.head_dim, kept = k.kept_tokens, quantized = kept - 2;
      // Everything but the outliers' bits is fixed per token: check data - 16*outliers and
      // meta - 32*outliers share one outlier count.
      const int64_t fixed_data = 2 * 16 * d * 2 + quantized * 2 * 2 * d;
      const int64_t fixed_meta = quantized * 3 * 32;
      ASSERT_GE(k.data_bits, fixed_data);
      EXPECT_EQ((k.data_bits - fixed_data) % 16, 0);
      EXPECT_EQ((k.data_bits - fixed_data) / 16, (k.meta_bits - fixed_meta) / 32)
          << "step " << k.step;
      EXPECT_EQ((k.meta_bits - fixed_meta) % 32, 0);
    }
  }
  // Without eviction all tokens are kept; with it the window + sinks.
  EXPECT_EQ(runs[0].kv.back().kept_tokens, 8);
}

std::string embedded() { return std::string(KVSIM_SOURCE_DIR) + "/trace/data/smollm2_default.h5"; }

double key_err(const std::string& spec) {
  TraceReader reader(embedded());
  ReplayOptions options;
  options.measure = MeasureRule::parse("last=4");
  return mean_key_err(replay(reader, {PolicySpec::parse(spec)}, options)[0]);
}

// methods.md's testable claims, on the embedded SmolLM2 trace (real RoPE'd keys).
TEST(Kvquant, PaperClaimsOnTheEmbeddedTrace) {
  const double pre = key_err("kvquant:bits=3");
  const double post = key_err("kvquant:bits=3,prerope=false");
  const double no_outliers = key_err("kvquant:bits=3,tau=1");
  const double uniform = key_err("kvquant:bits=3,nuq=false");
  const double per_token = key_err("uniform:bits=3,group=64,k_axis=token");
  std::cout << "[kvquant] key_err pre-RoPE " << pre << ", post-RoPE " << post << ", tau=1 "
            << no_outliers << ", uniform levels " << uniform << ", per-token RTN " << per_token
            << "\n";
  EXPECT_LT(pre, post);
  EXPECT_LT(post, per_token);
  EXPECT_LT(pre, 0.9 * no_outliers);
  EXPECT_LE(pre, uniform);
}

TEST(Kvquant, RefusesASingleSequenceAndScaledRope) {
  TempDir dir;
  const std::string path = testing::write_tiny(dir, "one.h5");
  TraceReader reader(path);
  try {
    (void)replay(reader, {PolicySpec::parse("kvquant")}, {});
    FAIL() << "single sequence accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("single sequence"), std::string::npos) << e.what();
  }
  TraceMeta meta = reader.meta();
  meta.rope_type = "llama3";
  EXPECT_THROW(PolicySpec::parse("kvquant").check_against(meta), ConfigError);
  EXPECT_NO_THROW(PolicySpec::parse("kvquant:prerope=false").check_against(meta));
}

}  // namespace
}  // namespace kvsim
