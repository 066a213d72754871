// ExpectedAttention (policies/expected_attention.cc): a hand-derived example
// (RoPE averaged over one or two future positions, the value norm, the sinks),
// the closed form against sampled Gaussian queries, kept counts and memory to
// the bit (sliding-window layers whole), and the paper's comparison on the
// embedded SmolLM2 trace.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <random>

#include "evict_testing.h"
#include "policies/scorer.h"
#include "sim/base/errors.h"
#include "trace/trace.h"

namespace kvsim::testing {
namespace {

// d = 2: one channel pair, rotated by p radians at position p (inv_freq = 1
// for any base > 0). Every pre-RoPE query is (1, 0), so the trace's query at t is
// (cos t, sin t); attention scale 1. Keys (post-RoPE): 0 (1,0) [sink],
// 1 (1,0), 2 (0,1), 3 (0,-1), 4 (-1,0), 5 (.5,0); values (1,0).
struct Worked : HandStage {
  explicit Worked(const std::string& params) : HandStage(1, 1, 2, 8, 6) {
    s.meta.rope_theta = 1e4;
    build("expected_attention:n_sink=1," + params);
    for (int t = 0; t < 8; ++t) {
      s.set_query(0, t, {static_cast<float>(std::cos(t)), static_cast<float>(std::sin(t))});
    }
    const std::vector<std::vector<float>> keys = {{1, 0},  {1, 0},  {0, 1},
                                                  {0, -1}, {-1, 0}, {.5f, 0}};
    for (int t = 0; t < 6; ++t) s.set_key(0, t, keys[t]);
    for (int t = 0; t < 8; ++t) s.layer.v[2 * t] = 1;
  }
  Positions evicted() { return select(stage(), s.layer, 5, true, range(0, 6)); }
};

TEST(ExpectedAttention, WorkedExampleRopeAveraging) {
  // n_future = 1: mu' = R(6)(1,0) = (.960, -.279): l = .960, -.279, .279, -.960,
  // .480 for keys 1..5; the sink and the best 3 stay: 1, 5, 3.
  EXPECT_EQ(Worked("budget=4,n_future=1").evicted(), (Positions{2, 4}));
  // n_future = 2: mu' = (R(6) + R(7))/2 (1,0) = (.857, .189): key 2 (.189)
  // now beats key 3 (-.189).
  EXPECT_EQ(Worked("budget=4,n_future=2").evicted(), (Positions{3, 4}));
}

TEST(ExpectedAttention, WorkedExampleValueNorm) {
  // n_future = 1, budget 3: by expected attention keys 1 (.390) and 5 (.242)
  // stay; |v_1| = .1 makes key 1 score .039, below key 3 (.198).
  Worked w("budget=3,n_future=1");
  EXPECT_EQ(w.evicted(), (Positions{2, 3, 4}));
  Worked v("budget=3,n_future=1");
  v.s.layer.v[2] = .1f;  // value of position 1
  EXPECT_EQ(v.evicted(), (Positions{1, 2, 4}));
  Worked off("budget=3,n_future=1,use_vnorm=false");
  off.s.layer.v[2] = .1f;
  EXPECT_EQ(off.evicted(), (Positions{2, 3, 4}));
}

// The prefill scores of the stage `spec` builds over `s` (kv head 0, every prompt position a
// candidate) with a budget of 10, 4 of them sinks: 6 stay.
std::vector<double> prefill_scores(HandShard& s, const std::string& spec,
                                   std::vector<int32_t>& eligible) {
  Pipeline p = Pipeline::create(PolicySpec::parse(spec), s.ctx, {});
  auto& stage = dynamic_cast<ScorerStage&>(*p.evicts[0]);
  ArrivalView view;
  view.step = s.ctx.prompt_len - 1;
  view.prefill = true;
  const Positions prompt = range(0, static_cast<int>(s.ctx.prompt_len));
  view.candidates = prompt;
  view.raw = &s.layer;
  std::vector<double> scores;
  EXPECT_EQ(stage.score_candidates(view, 10, eligible, scores), 6u);
  return scores;
}

// The closed form is log E[exp(s q.k)] for a Gaussian q: with q~ ~ N(mu, Sigma)
// from the pre-RoPE queries and q = Rbar q~, the mean of exp(s q.k) over
// samples tends to exp(l). The stage's expected attention (use_vnorm=false)
// is softmax(l), so its score ratios match the sampled ratios.
TEST(ExpectedAttention, ClosedFormMatchesSampledGaussianQueries) {
  const int d = 4, P = 40, n_future = 16;
  HandShard s(1, 1, d, P + 1, P);
  s.meta.attn_scale = 0.5;
  s.meta.rope_theta = 100;  // inv_freq 1 and 0.1
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  // Pre-RoPE queries: a mean and correlated channels; the trace holds them rotated.
  std::vector<std::vector<double>> pre(P, std::vector<double>(d));
  const std::vector<float> inv_freq = {1.0f, 1.0f / std::pow(100.0f, 0.5f)};
  for (int t = 0; t < P; ++t) {
    const double z0 = normal(rng), z1 = normal(rng), z2 = normal(rng), z3 = normal(rng);
    pre[t] = {1 + .8 * z0, -.5 + .3 * z0 + .4 * z1, .2 * z2, .6 + .5 * z3 - .2 * z2};
    std::vector<float> q(d);
    for (int i = 0; i < 2; ++i) {
      const double a = static_cast<double>(static_cast<float>(t) * inv_freq[i]);
      q[i] = static_cast<float>(pre[t][i] * std::cos(a) - pre[t][i + 2] * std::sin(a));
      q[i + 2] = static_cast<float>(pre[t][i + 2] * std::cos(a) + pre[t][i] * std::sin(a));
    }
    s.set_query(0, t, q);
    s.set_key(0, t,
              {static_cast<float>(normal(rng)), static_cast<float>(normal(rng)),
               static_cast<float>(normal(rng)), static_cast<float>(normal(rng))});
  }
  // Mean and covariance of the post-sink pre-RoPE queries (n_sink = 4), and Rbar.
  const int first = 4, n = P - first;
  std::vector<double> mu(d, 0.0), sigma(d * d, 0.0);
  for (int t = first; t < P; ++t) {
    for (int c = 0; c < d; ++c) mu[c] += pre[t][c] / n;
  }
  for (int t = first; t < P; ++t) {
    for (int a = 0; a < d; ++a) {
      for (int b = 0; b < d; ++b) sigma[a * d + b] += (pre[t][a] - mu[a]) * (pre[t][b] - mu[b]) / n;
    }
  }
  std::vector<double> rbar(d * d, 0.0);  // row-major
  for (int j = 0; j < n_future; ++j) {
    for (int i = 0; i < 2; ++i) {
      const double a = static_cast<double>(static_cast<float>(P + j) * inv_freq[i]);
      rbar[i * d + i] += std::cos(a) / n_future;
      rbar[(i + 2) * d + i + 2] += std::cos(a) / n_future;
      rbar[i * d + i + 2] -= std::sin(a) / n_future;
      rbar[(i + 2) * d + i] += std::sin(a) / n_future;
    }
  }
  // Cholesky of Sigma, then samples q = Rbar (mu + L z).
  std::vector<double> chol(d * d, 0.0);
  for (int i = 0; i < d; ++i) {
    for (int j = 0; j <= i; ++j) {
      double sum = sigma[i * d + j];
      for (int k = 0; k < j; ++k) sum -= chol[i * d + k] * chol[j * d + k];
      chol[i * d + j] = i == j ? std::sqrt(sum) : sum / chol[j * d + j];
    }
  }
  const int samples = 400000;
  std::vector<double> mean_exp(P - first, 0.0);
  for (int r = 0; r < samples; ++r) {
    std::vector<double> z(d), x(d), q(d, 0.0);
    for (double& v : z) v = normal(rng);
    for (int i = 0; i < d; ++i) {
      x[i] = mu[i];
      for (int k = 0; k <= i; ++k) x[i] += chol[i * d + k] * z[k];
    }
    for (int i = 0; i < d; ++i) {
      for (int k = 0; k < d; ++k) q[i] += rbar[i * d + k] * x[k];
    }
    for (int t = first; t < P; ++t) {
      double dot = 0;
      for (int c = 0; c < d; ++c) dot += q[c] * s.layer.key(0, t)[c];
      mean_exp[t - first] += std::exp(0.5 * dot) / samples;
    }
  }
  std::vector<int32_t> eligible;
  const std::vector<double> scores =
      prefill_scores(s, "expected_attention:budget=10,use_vnorm=false,n_future=16", eligible);
  ASSERT_EQ(eligible, range(first, P));
  double z = 0;
  for (double m : mean_exp) z += m;
  for (int t = first; t < P; ++t) {
    EXPECT_NEAR(scores[t - first], mean_exp[t - first] / z, 0.01 * mean_exp[t - first] / z)
        << "position " << t;
  }
}

// The rotation is the layer's own (Rope::for_slot): a trace whose per-layer base differs from
// rope_theta (Gemma 3's two bases) scores as a trace with that base, and unlike one scored
// with rope_theta; the interleaved layout scores differently again.
std::vector<double> scores_with(const std::function<void(TraceMeta&)>& edit) {
  const int d = 4, P = 24;
  HandShard s(1, 1, d, P + 1, P);
  edit(s.meta);
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int t = 0; t < P; ++t) {
    s.set_query(0, t, {normal(rng) + 1, normal(rng), normal(rng) - .5f, normal(rng)});
    s.set_key(0, t, {normal(rng), normal(rng), normal(rng), normal(rng)});
  }
  std::vector<int32_t> eligible;
  std::vector<double> scores =
      prefill_scores(s, "expected_attention:budget=10,n_future=8,use_vnorm=false", eligible);
  EXPECT_EQ(scores.size(), static_cast<size_t>(P - 4));
  return scores;
}

TEST(ExpectedAttention, UsesTheLayersOwnRotation) {
  const auto base_100 = scores_with([](TraceMeta& m) { m.rope_theta = 100; });
  const auto per_layer_100 = scores_with([](TraceMeta& m) {
    m.rope_theta = 1e6;
    m.rope_theta_by_slot = {100};
  });
  const auto base_1e6 = scores_with([](TraceMeta& m) { m.rope_theta = 1e6; });
  const auto interleaved = scores_with([](TraceMeta& m) {
    m.rope_theta = 100;
    m.rope_layout = "interleaved";
  });
  EXPECT_EQ(per_layer_100, base_100);
  EXPECT_NE(base_1e6, base_100);
  EXPECT_NE(interleaved, base_100);
}

TEST(ExpectedAttention, RefusesARotationItCannotUndo) {
  HandShard s(1, 1, 4, 4, 4);
  s.meta.rope_theta = 1e4;
  s.meta.rope_type = "llama3";
  try {
    PolicySpec::parse("expected_attention").check_against(s.meta);
    FAIL() << "llama3 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'llama3'"), std::string::npos) << e.what();
  }
}

// Eviction only, once: budget (sinks inside) + decoded tokens; sliding-window
// layers are kept whole (kvpress compresses only the global layers of Gemma 3).
TEST(ExpectedAttention, KeptCountsAndMemoryToTheBit) {
  TempDir dir;
  SynthConfig c = small_synth();  // P = 256, T = 320
  c.sliding_window = 64;
  c.sliding_every = 2;  // layers 1 and 3 global
  const int64_t d = c.head_dim, P = c.prompt_len;
  const auto runs = replay_synth(
      c, {"expected_attention", "expected_attention:budget=40+kivi:bits=4,residual=32"}, dir,
      every_step());
  for (const auto& k : runs[0].kv) {
    const int64_t want = k.layer % 2 == 1 ? 52 + k.step + 1 - P : 64;
    ASSERT_EQ(k.kept_tokens, want) << "layer " << k.layer << " step " << k.step;
    EXPECT_EQ(k.data_bits, 2 * 16 * d * k.kept_tokens);
    EXPECT_EQ(k.meta_bits, 0);
  }
  EXPECT_EQ(runs[0].counters.at("expected_attention.evicted_tokens"), 2 * 2 * (256 - 52));
  // The statistics: d + d*d per query head of the scored layers.
  EXPECT_EQ(runs[0].counters.at("expected_attention.stats_values"), 2 * c.q_heads * (d + d * d));
  for (const auto& k : runs[1].kv) {
    if (k.layer % 2 == 1) {
      EXPECT_EQ(k.kept_tokens, 40 + k.step + 1 - P);
    }
  }
}

// The paper's comparison: at equal budget ExpectedAttention keeps more of the
// future queries' attention than KNorm (l2norm, the same tokens kept), and more
// than StreamingLLM even where StreamingLLM holds more memory (sinks 4 and a
// window of 80), on the embedded SmolLM2 trace.
TEST(ExpectedAttention, KeepsMoreFutureAttentionThanKnormAndStreamingLlm) {
  const std::string path = std::string(KVSIM_SOURCE_DIR) + "/trace/data/smollm2_default.h5";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const TraceReader reader(path);
  std::vector<PolicySpec> specs;
  for (const char* s : {"expected_attention:ratio=0.25", "l2norm:keep_ratio=0.25,skip=[]",
                        "streamingllm:sinks=4,window=80", "expected_attention:ratio=0.1",
                        "l2norm:keep_ratio=0.1,skip=[]"}) {
    specs.push_back(PolicySpec::parse(s));
  }
  const auto runs = replay(reader, specs, ReplayOptions{});
  auto mass = [](const RunResult& r) {
    double m = 0;
    for (const auto& x : r.steps) m += x.mass_retained;
    return m / static_cast<double>(r.steps.size());
  };
  auto bits = [](const RunResult& r) {
    double b = 0;
    for (const auto& k : r.kv) b += static_cast<double>(k.data_bits + k.meta_bits);
    return b;
  };
  EXPECT_EQ(bits(runs[0]), bits(runs[1]));
  EXPECT_GT(mass(runs[0]), mass(runs[1]));
  EXPECT_LT(bits(runs[0]), bits(runs[2]));
  EXPECT_GT(mass(runs[0]), mass(runs[2]));
  EXPECT_EQ(bits(runs[3]), bits(runs[4]));
  EXPECT_GT(mass(runs[3]), mass(runs[4]));
}

TEST(ExpectedAttention, NeedsRope) {
  HandShard s(1, 1, 2, 4, 4);
  s.meta.rope_theta = 0;
  EXPECT_THROW(PolicySpec::parse("expected_attention").check_against(s.meta), ConfigError);
}

}  // namespace
}  // namespace kvsim::testing
