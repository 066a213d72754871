// The rotation (policies/rope.h) and trace format v2's RoPE metadata: hand-worked rotations in
// both layouts, the round trip, partial rotary and linear scaling, the rotation in double and
// the mean rotation against their formulas (ExpectedAttention), the trace's
// per-layer bases (v2 datasets, and v1's Gemma 3 attribute), refused RoPE types and positions.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <utility>

#include "policies/rope.h"
#include "test_util.h"
#include "trace/synth.h"

namespace kvsim {
namespace {

using testing::TempDir;

// theta = 16, d = 4: inv_freq = [1, 1/4]; at position 1 the pairs turn by 1 and 0.25 rad.
TEST(Rope, HandWorkedHalfAndInterleavedLayouts) {
  const Rope half(4, 16.0, 1.0, 4, /*interleaved=*/false);
  std::vector<float> x = {1, 0, 0, 0};  // pair (0, 2) turns by 1 rad: x0 -> cos 1, x2 -> sin 1
  half.apply(x.data(), 1, false);
  EXPECT_FLOAT_EQ(x[0], std::cos(1.f));
  EXPECT_FLOAT_EQ(x[2], std::sin(1.f));
  EXPECT_EQ(x[1], 0.f);
  EXPECT_EQ(x[3], 0.f);
  const Rope inter(4, 16.0, 1.0, 4, /*interleaved=*/true);
  std::vector<float> y = {0, 0, 1, 0};  // pair (2, 3) turns by 0.25 rad
  inter.apply(y.data(), 1, false);
  EXPECT_FLOAT_EQ(y[2], std::cos(0.25f));
  EXPECT_FLOAT_EQ(y[3], std::sin(0.25f));
  EXPECT_EQ(y[0], 0.f);
  // Position 0 is the identity; inverse undoes forward.
  std::vector<float> z = {0.3f, -1.2f, 2.5f, 0.7f};
  const std::vector<float> z0 = z;
  half.apply(z.data(), 0, false);
  EXPECT_EQ(z, z0);
  for (int64_t p : {1, 17, 1000, 40000}) {
    std::vector<float> w = z0;
    half.apply(w.data(), p, false);
    half.apply(w.data(), p, true);
    for (int c = 0; c < 4; ++c) EXPECT_NEAR(w[c], z0[c], 2e-6f) << "position " << p;
  }
}

TEST(Rope, PartialRotaryAndLinearScaling) {
  // rotary_dim 2 of d 4: channels 2, 3 never move.
  const Rope partial(4, 10000.0, 1.0, 2, false);
  std::vector<float> x = {1, 2, 3, 4};
  partial.apply(x.data(), 5, false);
  EXPECT_EQ(x[2], 3.f);
  EXPECT_EQ(x[3], 4.f);
  EXPECT_FLOAT_EQ(x[0], std::cos(5.f) - 2 * std::sin(5.f));  // inv_freq[0] = 1
  // Linear factor 4 at position 8 turns like factor 1 at position 2 (angles exact here).
  const Rope scaled(4, 100.0, 4.0, 4, false), plain(4, 100.0, 1.0, 4, false);
  std::vector<float> a = {1, 2, 3, 4}, b = a;
  scaled.apply(a.data(), 8, false);
  plain.apply(b.data(), 2, false);
  for (int c = 0; c < 4; ++c) EXPECT_NEAR(a[c], b[c], 1e-6f);
}

TEST(Rope, OrthogonalSoErrorsKeepTheirNorm) {
  // |R_p x^ - R_p x| = |x^ - x|: the pre-RoPE mode's quantization error is the key's error.
  const Rope rope(8, 10000.0, 1.0, 8, false);
  std::vector<float> x = {1, -2, 3, 0.5f, 0.25f, -1, 2, 4}, xh = x;
  for (float& v : xh) v += 0.125f;
  double before = 0;
  for (int c = 0; c < 8; ++c) before += (xh[c] - x[c]) * (xh[c] - x[c]);
  rope.apply(x.data(), 123, false);
  rope.apply(xh.data(), 123, false);
  double after = 0;
  for (int c = 0; c < 8; ++c) after += (xh[c] - x[c]) * (xh[c] - x[c]);
  EXPECT_NEAR(after, before, 1e-5);
}

// The channel pairs (a, b) of a layout, as methods.md defines them.
std::pair<int, int> pair_channels(int i, int rotary_dim, bool interleaved) {
  return interleaved ? std::pair{2 * i, 2 * i + 1} : std::pair{i, i + rotary_dim / 2};
}

// omega_i = theta^(-2i/r) / factor, in double.
double omega(int i, double theta, double factor, int rotary_dim) {
  return std::pow(theta, -2.0 * i / rotary_dim) / factor;
}

// rotate() against the rotation written out in double: both layouts, partial rotary (the
// channels past rotary_dim copied), a linear factor, forward and inverse. The only difference
// allowed is the float32 angle (about 1e-5 rad at these positions). apply() is rotate()
// rounded once to float32, to the bit.
TEST(Rope, RotateInDoubleIsTheFormula) {
  const int d = 6, r = 4;
  const double theta = 100, factor = 2;
  const std::vector<float> x = {0.5f, -1.25f, 2.0f, 0.75f, -3.0f, 1.5f};
  for (bool interleaved : {false, true}) {
    const Rope rope(d, theta, factor, r, interleaved);
    for (int64_t p : {0, 3, 250}) {
      for (bool inverse : {false, true}) {
        std::vector<double> out(d, -99.0);
        rope.rotate(x.data(), out.data(), p, inverse);
        for (int i = 0; i < r / 2; ++i) {
          const auto [a, b] = pair_channels(i, r, interleaved);
          const double angle = (inverse ? -1.0 : 1.0) * p * omega(i, theta, factor, r);
          EXPECT_NEAR(out[a], x[a] * std::cos(angle) - x[b] * std::sin(angle), 1e-4)
              << "position " << p << " pair " << i << " interleaved " << interleaved;
          EXPECT_NEAR(out[b], x[b] * std::cos(angle) + x[a] * std::sin(angle), 1e-4)
              << "position " << p << " pair " << i << " interleaved " << interleaved;
        }
        for (int c = r; c < d; ++c) EXPECT_EQ(out[c], x[c]);
        std::vector<float> applied = x;
        rope.apply(applied.data(), p, inverse);
        for (int c = 0; c < d; ++c) EXPECT_EQ(applied[c], static_cast<float>(out[c])) << c;
      }
    }
  }
}

// The mean rotation against the closed form of the mean of cos and sin over an arithmetic
// progression of angles (Lagrange's identity): sum_{j<n} cos(a + j w) =
// sin(n w / 2) / sin(w / 2) cos(a + (n - 1) w / 2), and the same with sin. Each pair's
// channel a goes to (mean cos, mean sin) on (a, b), channel b to (-mean sin, mean cos); the
// channels past rotary_dim stay. Over one position it is that position's rotation, exactly.
TEST(Rope, MeanRotationIsTheClosedFormMean) {
  const int d = 6, r = 4;
  const double theta = 100;
  const int64_t first = 40, count = 25;
  for (bool interleaved : {false, true}) {
    const Rope rope(d, theta, 1.0, r, interleaved);
    const MeanRotation mean = rope.mean_rotation(first, count);
    for (int i = 0; i < r / 2; ++i) {
      const double w = omega(i, theta, 1.0, r), n = static_cast<double>(count);
      const double spread = std::sin(n * w / 2) / std::sin(w / 2) / n;
      const double centre = (static_cast<double>(first) + (n - 1) / 2) * w;
      const double mean_cos = spread * std::cos(centre), mean_sin = spread * std::sin(centre);
      const auto [a, b] = pair_channels(i, r, interleaved);
      std::vector<double> ea(d, 0.0), eb(d, 0.0);
      ea[a] = 1;
      eb[b] = 1;
      mean.apply(ea.data());
      mean.apply(eb.data());
      EXPECT_NEAR(ea[a], mean_cos, 1e-5) << "pair " << i << " interleaved " << interleaved;
      EXPECT_NEAR(ea[b], mean_sin, 1e-5) << "pair " << i << " interleaved " << interleaved;
      EXPECT_NEAR(eb[a], -mean_sin, 1e-5) << "pair " << i << " interleaved " << interleaved;
      EXPECT_NEAR(eb[b], mean_cos, 1e-5) << "pair " << i << " interleaved " << interleaved;
      for (int c = 0; c < d; ++c) {
        if (c != a && c != b) {
          EXPECT_EQ(ea[c], 0.0) << c;
        }
      }
    }
    std::vector<double> tail = {0, 0, 0, 0, 2.5, -1};
    mean.apply(tail.data());
    EXPECT_EQ(tail, (std::vector<double>{0, 0, 0, 0, 2.5, -1}));
    // One position: R_p itself.
    const std::vector<float> x = {0.5f, -1.25f, 2.0f, 0.75f, -3.0f, 1.5f};
    std::vector<double> once(x.begin(), x.end()), rotated(d);
    rope.mean_rotation(77, 1).apply(once.data());
    rope.rotate(x.data(), rotated.data(), 77, false);
    EXPECT_EQ(once, rotated);
  }
}

TEST(Rope, PerLayerBasesAndRefusedTypes) {
  TraceMeta meta = testing::hand_meta(4, 1, 1, {0, 5});
  meta.rope_theta = 16;
  EXPECT_FALSE(Rope::for_slot(meta, 1).identity());
  meta.rope_theta_by_slot = {16, 1e6};
  std::vector<float> a = {0, 1, 0, 0}, b = a;
  Rope::for_slot(meta, 0).apply(a.data(), 1, false);  // inv_freq[1] = 1/4
  Rope::for_slot(meta, 1).apply(b.data(), 1, false);  // inv_freq[1] = 1e-3
  EXPECT_FLOAT_EQ(a[3], std::sin(0.25f));
  EXPECT_FLOAT_EQ(b[3], std::sin(1e-3f));
  meta.rope_type = "none";
  EXPECT_TRUE(Rope::for_slot(meta, 0).identity());
  meta.rope_type = "yarn";
  try {
    (void)Rope::for_slot(meta, 0);
    FAIL() << "yarn accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'yarn'"), std::string::npos);
  }
}

TEST(TraceV2, RopeMetadataRoundTripsAndV1KeepsWorking) {
  TempDir dir;
  SynthConfig c = testing::tiny_config();
  c.sliding_window = 8;
  c.sliding_every = 2;  // slots 0, 2, ... local, 1, 3, ... global
  const std::string path = dir.file("v2.h5");
  write_synth_trace(path, c);
  {
    TraceReader r(path);
    EXPECT_EQ(r.version(), 2);
    EXPECT_EQ(r.meta().rope_type, "default");
    EXPECT_EQ(r.meta().rope_layout, "half");
    ASSERT_EQ(r.meta().rope_theta_by_slot.size(), static_cast<size_t>(r.meta().num_layers()));
    EXPECT_EQ(r.meta().rope_theta_by_slot[0], r.meta().rope_theta);
    EXPECT_EQ(r.meta().rope_factor_by_slot[0], 1.0);
  }
  // The same file as v1 (the v2 objects removed), with Gemma 3's per-type attribute.
  {
    h5::Handle f = testing::open_rw(path);
    h5::write_attr(f.get(), "version", int64_t{1});
    for (const char* a : {"rope_type", "rope_layout", "rotary_dim"})
      ASSERT_GE(H5Adelete(f.get(), a), 0);
    for (const char* d : {"rope_theta_by_layer", "rope_factor_by_layer"}) {
      ASSERT_GE(H5Ldelete(f.get(), d, H5P_DEFAULT), 0);
    }
    h5::write_attr(f.get(), "rope_theta_by_layer_type",
                   std::string("sliding_attention=10000, full_attention=1e+06"));
  }
  {
    TraceReader r(path);
    EXPECT_EQ(r.version(), 1);
    EXPECT_EQ(r.meta().rope_type, "default");
    ASSERT_EQ(r.meta().rope_theta_by_slot.size(), static_cast<size_t>(r.meta().num_layers()));
    ASSERT_GT(r.meta().sliding_window[0], 0);
    ASSERT_EQ(r.meta().sliding_window[1], 0);
    for (int s = 0; s < r.meta().num_layers(); ++s) {
      EXPECT_EQ(r.meta().rope_theta_by_slot[s],
                r.meta().sliding_window[s] > 0 ? 10000.0 : r.meta().rope_theta);
    }
    (void)r.read_layer(0, 0);
  }
  // A v1 trace of a model known to scale RoPE cannot be un-rotated.
  {
    h5::Handle f = testing::open_rw(path);
    h5::write_attr(f.get(), "model_name", std::string("meta-llama/Llama-3.1-8B-Instruct"));
  }
  TraceReader scaled(path);
  EXPECT_THROW((void)Rope::for_slot(scaled.meta(), 0), ConfigError);
}

TEST(TraceV2, PositionsOtherThanTheTraceIndexAreRefused) {
  TempDir dir;
  const std::string path = testing::write_tiny(dir, "pos.h5");
  const int64_t tokens = TraceReader(path).sequence(0).num_tokens;
  {
    h5::Handle f = testing::open_rw(path);
    ASSERT_GE(H5Ldelete(f.get(), "sequences/000000/position_ids", H5P_DEFAULT), 0);
    h5::Handle g = h5::open_group(f.get(), "sequences/000000", "test");
    std::vector<int32_t> shifted(tokens);
    for (size_t t = 0; t < shifted.size(); ++t) shifted[t] = static_cast<int32_t>(t + 3);
    h5::write_vector(g.get(), "position_ids", shifted);
  }
  try {
    TraceReader r(path);
    FAIL() << "shifted positions accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("position_ids[0] is 3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvsim
