// The synthetic generator must have the structure the papers rely on; each
// test measures one property on the generated data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "sim/base/attention.h"
#include "sim/base/rng.h"
#include "trace/synth.h"

namespace kvsim {
namespace {

class SynthDefault : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    config_ = new SynthConfig(synth_preset("default"));
    layers_ = new std::vector<LayerData>(synth_sequence(*config_, 0));
  }
  static void TearDownTestSuite() {
    delete layers_;
    delete config_;
  }
  // Attention probabilities of query head qh at token t over tokens [0, t].
  static std::vector<float> attention(const LayerData& layer, int qh, int t) {
    const int d = config_->head_dim, group = config_->q_heads / config_->kv_heads;
    std::vector<float> p(t + 1);
    score_rows(layer.query(qh, t), 1, layer.key(qh / group, 0), t + 1, d,
               static_cast<float>(1.0 / std::sqrt(d)), p.data());
    softmax_inplace(p.data(), p.size());
    return p;
  }
  static SynthConfig* config_;
  static std::vector<LayerData>* layers_;
};
SynthConfig* SynthDefault::config_ = nullptr;
std::vector<LayerData>* SynthDefault::layers_ = nullptr;

TEST(Synth, DeterministicFromSeed) {
  SynthConfig c = synth_preset("tiny");
  const auto a = synth_sequence(c, 0);
  const auto b = synth_sequence(c, 0);
  ASSERT_EQ(a.size(), b.size());
  for (size_t l = 0; l < a.size(); ++l) {
    EXPECT_EQ(a[l].q, b[l].q);
    EXPECT_EQ(a[l].k, b[l].k);
    EXPECT_EQ(a[l].v, b[l].v);
  }
  c.seed = 2;
  EXPECT_NE(synth_sequence(c, 0)[0].k, a[0].k);
  EXPECT_NE(synth_sequence(synth_preset("tiny"), 1)[0].k, a[0].k);  // sequences differ
}

TEST(Synth, RopeIsARotationThatDependsOnRelativePosition) {
  Rng rng(3);
  const int d = 64;
  std::vector<float> q(d), k(d);
  for (auto& x : q) x = static_cast<float>(rng.normal());
  for (auto& x : k) x = static_cast<float>(rng.normal());
  auto rotated_dot = [&](int tq, int tk) {
    std::vector<float> a = q, b = k;
    apply_rope(a.data(), d, tq, 10000);
    apply_rope(b.data(), d, tk, 10000);
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += a[c] * b[c];
    return dot;
  };
  EXPECT_NEAR(rotated_dot(10, 3), rotated_dot(107, 100), 1e-3);  // same distance, same score
  std::vector<float> a = q;
  apply_rope(a.data(), d, 1234, 10000);
  double n0 = 0, n1 = 0;
  for (int c = 0; c < d; ++c) n0 += q[c] * q[c], n1 += a[c] * a[c];
  EXPECT_NEAR(n0, n1, 1e-3 * n0);  // norm preserved
}

TEST_F(SynthDefault, ShapesFollowGqa) {
  const auto& c = *config_;
  ASSERT_EQ(layers_->size(), static_cast<size_t>(c.model_layers));
  const auto& l0 = (*layers_)[0];
  EXPECT_EQ(l0.q.size(), static_cast<size_t>(c.q_heads) * c.tokens * c.head_dim);
  EXPECT_EQ(l0.k.size(), static_cast<size_t>(c.kv_heads) * c.tokens * c.head_dim);
  EXPECT_GT(c.q_heads, c.kv_heads);
}

TEST_F(SynthDefault, KeysHaveOutlierChannels) {
  const auto& c = *config_;
  const LayerData& layer = (*layers_)[3];
  for (int h = 0; h < c.kv_heads; ++h) {
    std::vector<double> channel_max(c.head_dim, 0);
    for (int t = c.sinks; t < c.tokens; ++t) {
      for (int ch = 0; ch < c.head_dim; ++ch) {
        channel_max[ch] = std::max(channel_max[ch], std::fabs(double(layer.key(h, t)[ch])));
      }
    }
    std::vector<double> sorted = channel_max;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[c.head_dim / 2];
    int outliers = 0;
    for (double m : channel_max) outliers += m > 4 * median;
    EXPECT_GE(outliers, 1) << "head " << h;
    EXPECT_LE(outliers, 2 * c.outlier_channels) << "head " << h;  // a few, not many
  }
}

TEST_F(SynthDefault, SinksAttractAttentionAndRecentTokensDominate) {
  const auto& c = *config_;
  const LayerData& layer = (*layers_)[4];
  double sink_mass = 0, recent_mass = 0;
  int count = 0;
  for (int qh = 0; qh < c.q_heads; ++qh) {
    for (int t = c.prompt_len; t < c.tokens; t += 16) {
      const auto p = attention(layer, qh, t);
      for (int i = 0; i < c.sinks; ++i) sink_mass += p[i];
      for (int i = t - 31; i <= t; ++i) recent_mass += p[i];
      ++count;
    }
  }
  sink_mass /= count;
  recent_mass /= count;
  const double uniform_sink = double(c.sinks) / c.prompt_len, uniform_recent = 32.0 / c.prompt_len;
  EXPECT_GT(sink_mass, 10 * uniform_sink) << "sinks get " << sink_mass;
  EXPECT_GT(recent_mass, 3 * uniform_recent) << "last 32 tokens get " << recent_mass;
}

TEST_F(SynthDefault, AdjacentLayerSimilarityGrowsWithDepth) {
  const auto& c = *config_;
  auto mean_cos = [&](int l) {  // cosine of keys (pre-sink) between layers l-1 and l
    const LayerData &a = (*layers_)[l - 1], &b = (*layers_)[l];
    double total = 0;
    int n = 0;
    for (int h = 0; h < c.kv_heads; ++h) {
      for (int t = c.sinks; t < c.tokens; ++t) {
        const float *x = a.key(h, t), *y = b.key(h, t);
        double dot = 0, nx = 0, ny = 0;
        for (int ch = 0; ch < c.head_dim; ++ch)
          dot += x[ch] * y[ch], nx += x[ch] * x[ch], ny += y[ch] * y[ch];
        total += dot / std::sqrt(nx * ny);
        ++n;
      }
    }
    return total / n;
  };
  const double shallow = mean_cos(1), deep = mean_cos(c.model_layers - 1);
  EXPECT_GT(deep, shallow + 0.2) << "shallow " << shallow << " deep " << deep;
  EXPECT_GT(deep, 0.8);
  for (int l = 2; l < c.model_layers; ++l) EXPECT_GT(mean_cos(l), mean_cos(l - 1) - 0.05) << l;
}

TEST(Synth, SlidingWindowPattern) {
  SynthConfig c = synth_preset("tiny");
  c.model_layers = 6;
  c.sliding_window = 16;
  c.sliding_every = 3;
  const TraceMeta m = synth_meta(c);
  EXPECT_EQ(m.sliding_window, (std::vector<int>{16, 16, 0, 16, 16, 0}));
}

TEST(Synth, RejectsBadConfig) {
  SynthConfig c = synth_preset("tiny");
  c.q_heads = 3;
  EXPECT_THROW(c.validate(), ConfigError);
  c = synth_preset("tiny");
  c.prompt_len = c.tokens;
  EXPECT_THROW(c.validate(), ConfigError);
  EXPECT_THROW(synth_preset("huge"), ConfigError);
}

}  // namespace
}  // namespace kvsim
