// QJL: the estimator's claims over seeds (unbiased, variance ((pi/2)|q|^2|k|^2 - <q,k>^2)/m
// for Gaussian rows, error falling as 1/sqrt(m)), the outlier channels' split, memory to the
// bit at every decode step with the key and value buffers, and bad parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "sim/base/rng.h"
#include "test_util.h"

namespace kvsim {
namespace {

using testing::TempDir;

struct Estimates {
  double mean = 0, variance = 0, rms_error = 0;
};

// q . k^ over `seeds` projections: the engine's score of the quantized key.
Estimates estimate(const std::vector<float>& q, const std::vector<float>& k, int m, int n_o,
                   bool orthogonal, int seeds) {
  const int d = static_cast<int>(k.size());
  testing::HandShard s(1, 1, d, 1, 1);
  s.set_key(0, 0, k);
  double exact = 0;
  for (int c = 0; c < d; ++c) exact += static_cast<double>(q[c]) * k[c];
  std::vector<double> xs;
  for (int seed = 0; seed < seeds; ++seed) {
    const std::string spec =
        "qjl:group=1,buffer=1,m=" + std::to_string(m) + ",m_early=" + std::to_string(m) +
        ",m_o=16,m_o_early=16,n_o=" + std::to_string(n_o) +
        ",orthogonal=" + (orthogonal ? "true" : "false") + ",seed=" + std::to_string(seed);
    auto store = Pipeline::create(PolicySpec::parse(spec), s.ctx, {}).store;
    HeadCache cache;
    cache.head_dim = d;
    store->insert(0, 0, cache, std::vector<int32_t>{0}, s.layer, true);
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * cache.keys[c];
    xs.push_back(dot);
  }
  Estimates e;
  for (double x : xs) e.mean += x / seeds;
  for (double x : xs) {
    e.variance += (x - e.mean) * (x - e.mean) / (seeds - 1);
    e.rms_error += (x - exact) * (x - exact) / seeds;
  }
  e.rms_error = std::sqrt(e.rms_error);
  return e;
}

TEST(Qjl, EstimatorIsUnbiasedWithThePredictedVariance) {
  Rng rng(7);
  const int d = 16;
  std::vector<float> q(d), k(d);
  for (int c = 0; c < d; ++c) {
    q[c] = static_cast<float>(rng.normal());
    k[c] = static_cast<float>(rng.normal());  // exact in fp16? rounded below by the cache
  }
  for (float& x : k) x = static_cast<float>(static_cast<int>(x * 64)) / 64;  // fp16-exact
  double qk = 0, q2 = 0, k2 = 0;
  for (int c = 0; c < d; ++c) {
    qk += static_cast<double>(q[c]) * k[c];
    q2 += static_cast<double>(q[c]) * q[c];
    k2 += static_cast<double>(k[c]) * k[c];
  }
  const int seeds = 1500, m = 64;
  const Estimates e = estimate(q, k, m, 0, /*orthogonal=*/false, seeds);
  const double predicted = (std::numbers::pi / 2 * q2 * k2 - qk * qk) / m;
  const double standard_error = std::sqrt(predicted / seeds);
  std::cout << "[qjl] <q,k> " << qk << ", mean estimate " << e.mean << " (s.e. " << standard_error
            << "), variance " << e.variance << " predicted " << predicted << "\n";
  // |k| is stored in fp16: a relative bias below 2^-11 at most.
  EXPECT_NEAR(e.mean, qk, 4 * standard_error + std::sqrt(q2 * k2) * 1e-3);
  EXPECT_NEAR(e.variance / predicted, 1.0, 0.15);
  // Error falls as 1/sqrt(m): 4x the rows, half the error (orthogonalized blocks, the default).
  const Estimates small = estimate(q, k, 32, 0, true, 400);
  const Estimates large = estimate(q, k, 128, 0, true, 400);
  const double ratio = large.rms_error / small.rms_error;
  std::cout << "[qjl] rms error m=32 " << small.rms_error << ", m=128 " << large.rms_error
            << " (ratio " << ratio << ", 1/sqrt(m) predicts 0.5)\n";
  EXPECT_GT(ratio, 0.35);
  EXPECT_LT(ratio, 0.65);
}

// A key that lives only in its outlier channels is carried by the outlier sketch alone: the
// in-channel part of k^ is zero (|k_in| = 0) and the outlier part is nonzero.
TEST(Qjl, OutlierChannelsSplitTheKey) {
  testing::HandShard s(1, 1, 8, 1, 1);
  s.set_key(0, 0, {0, 0, 5, 0, 0, -3, 0, 0});
  auto store = Pipeline::create(PolicySpec::parse("qjl:group=1,buffer=1,n_o=2"), s.ctx, {}).store;
  HeadCache cache;
  cache.head_dim = 8;
  store->insert(0, 0, cache, std::vector<int32_t>{0}, s.layer, true);
  for (int c : {0, 1, 3, 4, 6, 7}) EXPECT_EQ(cache.keys[c], 0.f) << "channel " << c;
  EXPECT_NE(cache.keys[2], 0.f);
  EXPECT_NE(cache.keys[5], 0.f);
  EXPECT_GT(cache.keys[2] * 5 + cache.keys[5] * -3, 0.f);  // points the key's way
}

// Memory at every decode step: fp16 keys n mod R (quantized before the step attends), fp16
// values min(n, R + 1) (the oldest of R + 1 quantized after attention), m + m_o + 32 bits per
// quantized key, 8 n_o per 16-key group, b_v d + 32 per value group.
TEST(Qjl, StreamingMemoryToTheBit) {
  TempDir dir;
  const SynthConfig c = testing::tiny_config();  // d = 32, P = 64, T = 96, layers < 15
  const auto runs = testing::replay_synth(
      c, {"qjl:m_early=64,m_o_early=32,n_o=4,group=16,buffer=32,v_group=16,v_bits=2"}, dir,
      testing::every_step());
  const int64_t d = c.head_dim, R = 32;
  ASSERT_FALSE(runs[0].kv.empty());
  for (const auto& k : runs[0].kv) {
    const int64_t n = k.step + 1, fp16_keys = n % R, fp16_values = std::min(n, R + 1);
    const int64_t kq = n - fp16_keys, vq = n - fp16_values;
    EXPECT_EQ(k.data_bits, (fp16_keys + fp16_values) * d * 16 + kq * (64 + 32) + vq * 2 * d)
        << "step " << k.step;
    EXPECT_EQ(k.meta_bits, kq * 32 + kq / 16 * 8 * 4 + vq * (d / 16) * 32) << "step " << k.step;
  }
}

TEST(Qjl, RefusesBadParameters) {
  EXPECT_NE(testing::spec_error("qjl:group=32,buffer=48").find("multiple of group"),
            std::string::npos);
  EXPECT_THROW(PolicySpec::parse("qjl:v_group=48").check_against(testing::hand_meta(64)),
               ConfigError);
}

}  // namespace
}  // namespace kvsim
