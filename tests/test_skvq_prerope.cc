// SKVQ's pre-RoPE option (skvq:prerope=true): a hand-worked key quantized before RoPE and
// rotated back; values untouched; no RoPE = the post-RoPE result to the bit (calibration
// included); scaled RoPE types refused; calibration files record the mode; the key error
// against post-RoPE SKVQ on the embedded SmolLM2 trace.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>

#include "policies/rope.h"
#include "policies/skvq_calibration.h"
#include "sim/calibration.h"
#include "sim/skvq_calibration_io.h"
#include "test_util.h"

namespace kvsim {
namespace {

using testing::mean_key_err;
using testing::TempDir;

// One head (d = 4) of three tokens; token 2's key is R_2 x with x = [-4, -1, 1, 4].
struct RotatedHead {
  static constexpr int d = 4, pos = 2;
  TraceMeta meta = testing::hand_meta(d);
  LayerData layer;
  std::vector<float> x = {-4, -1, 1, 4};
  RotatedHead() {
    meta.rope_theta = 16;
    layer.num_tokens = 3;
    layer.head_dim = d;
    layer.k.assign(3 * d, 0.f);
    layer.v = {0, 0, 0, 0, 0, 0, 0, 0, 0.5f, -3, 2, 7};
    layer.q.assign(layer.k.size(), 0.f);
    std::vector<float> k = x;
    Rope::for_slot(meta, 0).apply(k.data(), pos, /*inverse=*/false);
    std::copy(k.begin(), k.end(), layer.k.begin() + pos * d);
  }
  // The key and value row `spec` stores for token 2 (quantized at once: window=0, sinks=0).
  std::pair<std::vector<float>, std::vector<float>> store(const std::string& spec) const {
    ShardContext ctx = testing::hand_context(meta, {&layer}, 3, 3);
    Pipeline pipe = Pipeline::create(PolicySpec::parse(spec), ctx, {});
    HeadCache cache;
    cache.head_dim = d;
    const int32_t p = pos;
    pipe.store->insert(0, 0, cache, std::span<const int32_t>(&p, 1), layer, true);
    return {{cache.key_row(0), cache.key_row(0) + d}, {cache.value_row(0), cache.value_row(0) + d}};
  }
};

// 2 bits, one group of 4, clip 1: R_2^-1 k = x (to float rounding), min -4, max 4, scale
// s = fp16(8/3), zero point -4; (x + 4)/s = 0, 1.125 -> 1, 1.875 -> 2, 3.0007 -> 3. So the
// pre-RoPE dequantized key is -4 + code * s = [-4, -4 + s, -4 + 2s, -4 + 3s] and the stored
// key R_2 of that.
TEST(SkvqPreRope, KeyIsRotatedDequantOfTheUnrotatedKey) {
  const RotatedHead head;
  const std::string spec = "skvq:k_bits=2,v_bits=2,group=4,window=0,sinks=0,reorder=false,clip=1";
  const auto [pre_k, pre_v] = head.store(spec + ",prerope=true");
  const float s = 2.666015625f;  // fp16(8/3)
  std::vector<float> want = {-4, -4 + s, -4 + 2 * s, -4 + 3 * s};
  Rope::for_slot(head.meta, 0).apply(want.data(), RotatedHead::pos, /*inverse=*/false);
  for (int c = 0; c < RotatedHead::d; ++c) EXPECT_NEAR(pre_k[c], want[c], 1e-5f) << c;
  // Post-RoPE quantizes the rotated key itself: another key; the values are the same.
  const auto [post_k, post_v] = head.store(spec + ",prerope=false");
  const auto [default_k, default_v] = head.store(spec);
  EXPECT_EQ(default_k, post_k);
  double diff = 0;
  for (int c = 0; c < RotatedHead::d; ++c) diff += std::abs(post_k[c] - pre_k[c]);
  EXPECT_GT(diff, 0.1);
  EXPECT_EQ(pre_v, post_v);
}

// Calibration reads the keys SKVQ quantizes: pre-RoPE statistics differ from post-RoPE ones
// on a RoPE'd trace; with rope_type none (the identity) they are post-RoPE's to the bit.
TEST(SkvqPreRope, NoRopeGivesThePostRopeResultToTheBit) {
  TempDir dir;
  TraceReader reader(testing::write_tiny(dir, "t.h5"));
  TraceMeta meta = reader.meta();
  ASSERT_FALSE(Rope::for_slot(meta, 0).identity());  // the tiny trace has RoPE
  meta.rope_type = "none";
  ASSERT_TRUE(Rope::for_slot(meta, 0).identity());
  // Calibration statistics: identical without RoPE, different with it.
  const Params pre = parse_skvq_params("group=4,clip_search=true,prerope=true");
  const Params post = parse_skvq_params("group=4,clip_search=true");
  const SkvqOptions pre_opt = SkvqOptions::from_params(pre);
  const SkvqOptions post_opt = SkvqOptions::from_params(post);
  const TraceCalibrationSource rotated(reader);
  const auto rotated_pre = collect_skvq_stats(rotated, 0, pre_opt, 4);
  const auto rotated_post = collect_skvq_stats(rotated, 0, post_opt, 4);
  EXPECT_NE(rotated_pre[0].k_min, rotated_post[0].k_min);
  EXPECT_EQ(rotated_pre[0].v_min, rotated_post[0].v_min);
  // The same trace with rope_type none (the meta is what calibration sees).
  struct NoRope final : TraceCalibrationSource {
    TraceMeta m;
    NoRope(const TraceReader& reader, TraceMeta meta)
        : TraceCalibrationSource(reader), m(std::move(meta)) {}
    const TraceMeta& meta() const override { return m; }
  } plain(reader, meta);
  const auto plain_pre = collect_skvq_stats(plain, 0, pre_opt, 4);
  const auto plain_post = collect_skvq_stats(plain, 0, post_opt, 4);
  EXPECT_EQ(plain_pre[0].k_min, plain_post[0].k_min);
  EXPECT_EQ(plain_pre[0].k_sample, plain_post[0].k_sample);
  EXPECT_EQ(plain_pre[0].k_sample, rotated_post[0].k_sample);  // rope_type none = raw keys
}

TEST(SkvqPreRope, RefusesRopeTypesItCannotInvert) {
  TempDir dir;
  TraceReader reader(testing::write_tiny(dir, "t.h5"));
  TraceMeta meta = reader.meta();
  for (const char* type : {"llama3", "yarn", "dynamic"}) {
    meta.rope_type = type;
    try {
      PolicySpec::parse("skvq:group=4,prerope=true").check_against(meta);
      FAIL() << type << " accepted";
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("prerope"), std::string::npos) << what;
      EXPECT_NE(what.find(type), std::string::npos) << what;
    }
    EXPECT_NO_THROW(PolicySpec::parse("skvq:group=4").check_against(meta));
  }
}

std::string embedded() { return std::string(KVSIM_SOURCE_DIR) + "/trace/data/smollm2_default.h5"; }

// A calibration file records the mode: it round-trips, a file of the other mode is refused,
// and scoring with the file equals leave-one-out on the same held-out sequence.
TEST(SkvqPreRope, CalibrationFilesRecordTheMode) {
  TempDir dir;
  const std::string calib_path = dir.file("calib.h5");
  TraceReader reader(embedded());
  ASSERT_EQ(reader.num_sequences(), 3);
  const std::string params = "group=32,window=32,clip_search=true,calib_tokens=64,prerope=true";
  const SkvqCalibration calib = calibrate_skvq(reader, {1, 2}, parse_skvq_params(params));
  save_skvq_calibration(calib_path, calib);
  const SkvqCalibration back = load_skvq_calibration(calib_path, reader.meta());
  EXPECT_TRUE(back.options.prerope);
  EXPECT_EQ(back.stats[0].k_min, calib.stats[0].k_min);
  ReplayOptions seq0;
  seq0.sequences = {0};
  seq0.measure = MeasureRule::parse("last=4");
  const auto loo = replay(reader, {PolicySpec::parse("skvq:" + params)}, seq0);
  const auto file =
      replay(reader, {PolicySpec::parse("skvq:" + params + ",calib=" + calib_path)}, seq0);
  ASSERT_EQ(loo[0].steps.size(), file[0].steps.size());
  for (size_t i = 0; i < loo[0].steps.size(); ++i) {
    EXPECT_EQ(loo[0].steps[i].rel_err, file[0].steps[i].rel_err);
  }
  try {
    (void)replay(reader,
                 {PolicySpec::parse("skvq:group=32,window=32,clip_search=true,calib_tokens=64,"
                                    "calib=" +
                                    calib_path)},
                 seq0);
    FAIL() << "a pre-RoPE calibration accepted by a post-RoPE policy";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("prerope=true"), std::string::npos) << e.what();
  }
}

double key_err(const std::string& spec) {
  TraceReader reader(embedded());
  ReplayOptions options;
  options.measure = MeasureRule::parse("last=4");
  return mean_key_err(replay(reader, {PolicySpec::parse(spec)}, options)[0]);
}

// SKVQ's official code quantizes keys before RoPE: on real RoPE'd keys (SmolLM2) at 2 bits
// the key error is lower than quantizing the rotated keys.
TEST(SkvqPreRope, LowerKeyErrorOnTheEmbeddedTrace) {
  const std::string spec = "skvq:k_bits=2,v_bits=2,group=32,window=32";
  const double post = key_err(spec);
  const double pre = key_err(spec + ",prerope=true");
  std::cout << "[skvq] key_err 2 bits pre-RoPE " << pre << ", post-RoPE " << post << "\n";
  EXPECT_LT(pre, post);
}

}  // namespace
}  // namespace kvsim
