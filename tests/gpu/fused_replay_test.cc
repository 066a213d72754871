// Fused replay attention (FusedReplayArgs, gpu/replay_types.h): the double-precision CPU
// reference against a naive evaluation of every formula and hand-checkable cases (always run),
// and the GPU kernel against the reference on random packed caches (skipped without a device).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/kernels.h"
#include "gpu/packing.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"
#include "tests/gpu/test_util.h"

namespace kvsim::gpu {
namespace {

using testing::random_uniform;

struct ReplayCase {
  int num_q_heads;
  int num_kv_heads;
  int head_dim;
  std::int64_t quant_tokens;
  std::int64_t residual_tokens;
  int key_bits, key_group, value_bits, value_group;
  bool exact_f16;
  double present_fraction;  // 1: no mask
  float scale_multiplier;   // scale = multiplier / sqrt(head_dim)
};

std::string replay_case_name(const ::testing::TestParamInfo<ReplayCase>& info) {
  const ReplayCase& c = info.param;
  return testing::case_name(
      "q", c.num_q_heads, "_kv", c.num_kv_heads, "_d", c.head_dim, "_nq", c.quant_tokens, "_nr",
      c.residual_tokens, "_k", c.key_bits, "g", c.key_group, "_v", c.value_bits, "g", c.value_group,
      c.exact_f16 ? "_f16" : "_f32", "_p", static_cast<int>(c.present_fraction * 100), "_x",
      static_cast<int>(c.scale_multiplier));
}

// A FusedReplayArgs of case c over the arrays of `b`: ReplayData's host vectors or
// DeviceReplay's device buffers (the same member names); `masked`: pass the present mask.
template <typename Buffers>
FusedReplayArgs bind_args(const ReplayCase& c, Buffers& b, bool masked) {
  FusedReplayArgs a;
  a.num_q_heads = c.num_q_heads;
  a.num_kv_heads = c.num_kv_heads;
  a.head_dim = c.head_dim;
  a.num_quant_tokens = c.quant_tokens;
  a.num_residual_tokens = c.residual_tokens;
  a.scale = c.scale_multiplier / std::sqrt(static_cast<float>(c.head_dim));
  a.key_bits = c.key_bits;
  a.key_group = c.key_group;
  a.value_bits = c.value_bits;
  a.value_group = c.value_group;
  a.q = b.q.data();
  a.key_codes = b.k_codes.data();
  a.key_scale = b.k_scale.data();
  a.key_min = b.k_min.data();
  a.value_codes = b.v_codes.data();
  a.value_scale = b.v_scale.data();
  a.value_min = b.v_min.data();
  a.key_residual = b.k_res.data();
  a.value_residual = b.v_res.data();
  if (c.exact_f16) {
    a.key_exact_f16 = b.k_ex16.data();
    a.value_exact_f16 = b.v_ex16.data();
  } else {
    a.key_exact_f32 = b.k_ex.data();
    a.value_exact_f32 = b.v_ex.data();
  }
  a.present = masked ? b.present.data() : nullptr;
  a.out_hat = b.out_hat.data();
  a.lse_hat = b.lse_hat.data();
  a.out = b.out.data();
  a.lse = b.lse.data();
  a.rel_err = b.rel_err.data();
  a.cosine = b.cosine.data();
  a.kl = b.kl.data();
  a.mass_retained = b.mass.data();
  return a;
}

// Host copies of one (layer, step): a KIVI-packed cache built from random exact K/V, and the
// outputs. args() points a FusedReplayArgs at these vectors.
struct ReplayData {
  ReplayCase c;
  std::vector<float> q, k_ex, v_ex;           // exact, [Hkv, n, d] (fp16 values if f16)
  std::vector<std::uint16_t> k_ex16, v_ex16;  // the same as fp16 bits (exact_f16)
  std::vector<std::uint32_t> k_codes, v_codes;
  std::vector<std::uint16_t> k_scale, k_min, v_scale, v_min, k_res, v_res;
  std::vector<std::uint8_t> present;  // empty: all present
  std::vector<float> out_hat, lse_hat, out, lse, rel_err, cosine, kl, mass;

  std::int64_t n() const { return c.quant_tokens + c.residual_tokens; }

  FusedReplayArgs args() { return bind_args(c, *this, !present.empty()); }
};

// Keys and values with per-channel offsets and spreads (outlier channels, a mean the output
// keeps: |out| is O(sqrt(d)), so relative errors are well conditioned).
std::vector<float> structured(int heads, std::int64_t n, int d, std::uint32_t seed) {
  std::vector<float> x = random_uniform(static_cast<std::size_t>(heads * n * d), seed);
  const auto off = random_uniform(static_cast<std::size_t>(d), seed + 1, -2.0f, 2.0f);
  const auto spread = random_uniform(static_cast<std::size_t>(d), seed + 2, 0.2f, 2.0f);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t c = i % static_cast<std::size_t>(d);
    x[i] = off[c] + spread[c] * x[i];
  }
  return x;
}

ReplayData make_data(const ReplayCase& c, std::uint32_t seed) {
  ReplayData r;
  r.c = c;
  const int hkv = c.num_kv_heads, d = c.head_dim;
  const std::int64_t n = r.n(), nq = c.quant_tokens, nr = c.residual_tokens;
  r.q = random_uniform(static_cast<std::size_t>(c.num_q_heads * d), seed);
  r.k_ex = structured(hkv, n, d, seed + 10);
  r.v_ex = structured(hkv, n, d, seed + 20);
  r.k_ex16.resize(r.k_ex.size());
  r.v_ex16.resize(r.v_ex.size());
  cpu_reference::convert_float_to_half(r.k_ex.data(), static_cast<std::int64_t>(r.k_ex.size()),
                                       r.k_ex16.data());
  cpu_reference::convert_float_to_half(r.v_ex.data(), static_cast<std::int64_t>(r.v_ex.size()),
                                       r.v_ex16.data());
  if (c.exact_f16) {  // the float copies hold the fp16 values (used by the naive evaluation)
    for (std::size_t i = 0; i < r.k_ex.size(); ++i) {
      r.k_ex[i] = half_bits_to_float(r.k_ex16[i]);
      r.v_ex[i] = half_bits_to_float(r.v_ex16[i]);
    }
  }
  // Quantize the first nq tokens of each head (KIVI), keep the rest as the fp16 residual.
  std::vector<float> kq(static_cast<std::size_t>(hkv * nq * d)), vq(kq.size());
  for (int h = 0; h < hkv; ++h) {
    std::copy_n(r.k_ex.begin() + h * n * d, nq * d, kq.begin() + h * nq * d);
    std::copy_n(r.v_ex.begin() + h * n * d, nq * d, vq.begin() + h * nq * d);
    for (std::int64_t i = 0; i < nr * d; ++i) {
      r.k_res.push_back(r.k_ex16[static_cast<std::size_t>((h * n + nq) * d + i)]);
      r.v_res.push_back(r.v_ex16[static_cast<std::size_t>((h * n + nq) * d + i)]);
    }
  }
  r.k_codes.resize(static_cast<std::size_t>(hkv * words_per_row(nq, c.key_bits) * d));
  r.k_scale.resize(static_cast<std::size_t>(hkv * num_groups_of(nq, c.key_group) * d));
  r.k_min.resize(r.k_scale.size());
  r.v_codes.resize(static_cast<std::size_t>(hkv * nq * words_per_row(d, c.value_bits)));
  r.v_scale.resize(static_cast<std::size_t>(hkv * nq * num_groups_of(d, c.value_group)));
  r.v_min.resize(r.v_scale.size());
  if (nq > 0) {
    cpu_reference::kivi_quantize_keys(kq.data(), hkv, nq, d, c.key_group, c.key_bits,
                                      r.k_codes.data(), r.k_scale.data(), r.k_min.data());
    cpu_reference::kivi_quantize_values(vq.data(), hkv, nq, d, c.value_group, c.value_bits,
                                        r.v_codes.data(), r.v_scale.data(), r.v_min.data());
  }
  if (c.present_fraction < 1.0) {
    std::mt19937 rng(seed + 30);
    std::bernoulli_distribution keep(c.present_fraction);
    r.present.resize(static_cast<std::size_t>(hkv * n));
    for (auto& p : r.present) p = keep(rng) ? 1 : 0;
    for (int h = 0; h < hkv; ++h) r.present[static_cast<std::size_t>(h * n + n - 1)] = 1;
  }
  const auto hq = static_cast<std::size_t>(c.num_q_heads);
  r.out_hat.assign(hq * d, NAN);
  r.out.assign(hq * d, NAN);
  for (auto* v : {&r.lse_hat, &r.lse, &r.rel_err, &r.cosine, &r.kl, &r.mass}) v->assign(hq, NAN);
  return r;
}

// --- naive evaluation ----------------------------------------------------------------------------

struct Naive {
  std::vector<double> out, out_hat, lse, lse_hat, mass, kl, kl_engine_form, rel_err, cosine;
};

// Straight from the definitions, in double: dense K^/V^ from the KIVI dequantizers and the
// residual, probabilities with max subtraction, KL = sum p~ log(p~ / p^) term by term.
Naive naive(ReplayData& r) {
  const ReplayCase& c = r.c;
  const int hkv = c.num_kv_heads, d = c.head_dim, qpk = c.num_q_heads / c.num_kv_heads;
  const std::int64_t n = r.n(), nq = c.quant_tokens;
  const double scale = static_cast<double>(r.args().scale);
  std::vector<float> k_hat(r.k_ex.size()), v_hat(r.v_ex.size());
  std::vector<float> tmp(static_cast<std::size_t>(hkv * nq * d));
  if (nq > 0) {
    cpu_reference::kivi_dequantize_keys(r.k_codes.data(), r.k_scale.data(), r.k_min.data(), hkv, nq,
                                        d, c.key_group, c.key_bits, tmp.data());
    for (int h = 0; h < hkv; ++h)
      std::copy_n(tmp.begin() + h * nq * d, nq * d, k_hat.begin() + h * n * d);
    cpu_reference::kivi_dequantize_values(r.v_codes.data(), r.v_scale.data(), r.v_min.data(), hkv,
                                          nq, d, c.value_group, c.value_bits, tmp.data());
    for (int h = 0; h < hkv; ++h)
      std::copy_n(tmp.begin() + h * nq * d, nq * d, v_hat.begin() + h * n * d);
  }
  for (int h = 0; h < hkv; ++h) {
    for (std::int64_t i = 0; i < c.residual_tokens * d; ++i) {
      const auto at = static_cast<std::size_t>((h * n + nq) * d + i);
      k_hat[at] =
          half_bits_to_float(r.k_res[static_cast<std::size_t>(h * c.residual_tokens * d + i)]);
      v_hat[at] =
          half_bits_to_float(r.v_res[static_cast<std::size_t>(h * c.residual_tokens * d + i)]);
    }
  }
  Naive z;
  for (int qh = 0; qh < c.num_q_heads; ++qh) {
    const int kvh = qh / qpk;
    auto present = [&](std::int64_t t) {
      return r.present.empty() || r.present[static_cast<std::size_t>(kvh * n + t)] != 0;
    };
    std::vector<double> raw(static_cast<std::size_t>(n)), s(static_cast<std::size_t>(n));
    for (std::int64_t t = 0; t < n; ++t) {
      double a = 0, b = 0;
      for (int i = 0; i < d; ++i) {
        const auto at = static_cast<std::size_t>((kvh * n + t) * d + i);
        a += static_cast<double>(r.q[qh * d + i]) * r.k_ex[at];
        b += static_cast<double>(r.q[qh * d + i]) * k_hat[at];
      }
      raw[t] = scale * a;
      s[t] = scale * b;
    }
    const double m = *std::max_element(raw.begin(), raw.end());
    double m_hat = -INFINITY;
    for (std::int64_t t = 0; t < n; ++t) {
      if (present(t)) m_hat = std::max(m_hat, s[t]);
    }
    double z_all = 0, z_present = 0, z_hat = 0;
    for (std::int64_t t = 0; t < n; ++t) {
      z_all += std::exp(raw[t] - m);
      if (present(t)) {
        z_present += std::exp(raw[t] - m);
        z_hat += std::exp(s[t] - m_hat);
      }
    }
    const double lse = m + std::log(z_all);
    const double lse_hat = m_hat + std::log(z_hat);
    std::vector<double> o(d, 0.0), oh(d, 0.0);
    double kl = 0, mass = 0, cross = 0;
    for (std::int64_t t = 0; t < n; ++t) {
      const double p = std::exp(raw[t] - lse);
      for (int i = 0; i < d; ++i)
        o[i] += p * r.v_ex[static_cast<std::size_t>((kvh * n + t) * d + i)];
      if (!present(t)) continue;
      mass += p;
      cross += p * (raw[t] - s[t]);
      const double p_hat = std::exp(s[t] - lse_hat);
      const double p_tilde = std::exp(raw[t] - m) / z_present;
      kl += p_tilde * std::log(p_tilde / p_hat);
      for (int i = 0; i < d; ++i)
        oh[i] += p_hat * v_hat[static_cast<std::size_t>((kvh * n + t) * d + i)];
    }
    double diff = 0, on = 0, ohn = 0, dot = 0;
    for (int i = 0; i < d; ++i) {
      z.out.push_back(o[i]);
      z.out_hat.push_back(oh[i]);
      diff += (oh[i] - o[i]) * (oh[i] - o[i]);
      on += o[i] * o[i];
      ohn += oh[i] * oh[i];
      dot += oh[i] * o[i];
    }
    z.lse.push_back(lse);
    z.lse_hat.push_back(lse_hat);
    z.mass.push_back(mass);
    z.kl.push_back(kl);
    z.kl_engine_form.push_back(cross / mass + lse_hat - lse - std::log(mass));
    z.rel_err.push_back(std::sqrt(diff / on));
    z.cosine.push_back(dot / std::sqrt(on * ohn));
  }
  return z;
}

double max_abs(const std::vector<float>& x) {
  double m = 0;
  for (float v : x) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

// --- CPU reference
// --------------------------------------------------------------------------------

class CpuFusedReplay : public ::testing::TestWithParam<ReplayCase> {};

// The reference evaluates the same quantities in double with a different algebra (two maxima,
// the KL through sums); agreement is limited by the float outputs: 2^-24 relative, allowed
// 1e-6 of max(1, |value|); the KL to 1e-6 relative + 1e-12.
TEST_P(CpuFusedReplay, MatchesNaiveEvaluation) {
  ReplayData r = make_data(GetParam(), 7);
  cpu_reference::fused_replay_attention(r.args());
  const Naive z = naive(r);
  auto near = [](double got, double want) {
    return std::fabs(got - want) <= 1e-6 * std::max(1.0, std::fabs(want));
  };
  for (std::size_t i = 0; i < r.out.size(); ++i) {
    ASSERT_TRUE(std::isfinite(r.out[i]) && std::isfinite(r.out_hat[i])) << i;
    ASSERT_PRED2(near, r.out[i], z.out[i]) << i;
    ASSERT_PRED2(near, r.out_hat[i], z.out_hat[i]) << i;
  }
  for (std::size_t h = 0; h < r.lse.size(); ++h) {
    EXPECT_PRED2(near, r.lse[h], z.lse[h]) << h;
    EXPECT_PRED2(near, r.lse_hat[h], z.lse_hat[h]) << h;
    EXPECT_PRED2(near, r.mass[h], z.mass[h]) << h;
    EXPECT_PRED2(near, r.rel_err[h], z.rel_err[h]) << h;
    EXPECT_PRED2(near, r.cosine[h], z.cosine[h]) << h;
    EXPECT_TRUE(std::isfinite(r.kl[h]));
    EXPECT_NEAR(r.kl[h], z.kl[h], 1e-6 * z.kl[h] + 1e-12) << h;
    // The engine's closed form and the definition agree (in double).
    EXPECT_NEAR(z.kl_engine_form[h], z.kl[h], 1e-9) << h;
    EXPECT_GT(z.kl[h], 0.0) << h;  // a lossy cache: the metric is not trivially zero
    if (r.present.empty()) {
      EXPECT_EQ(r.mass[h], 1.0f) << h;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuFusedReplay,
    ::testing::Values(ReplayCase{4, 2, 64, 64, 7, 2, 32, 2, 32, false, 1.0, 1.0f},
                      ReplayCase{3, 1, 128, 100, 0, 3, 20, 5, 24, true, 0.6, 2.0f},
                      ReplayCase{8, 8, 64, 33, 30, 4, 16, 4, 64, true, 1.0, 4.0f},
                      ReplayCase{2, 1, 256, 300, 128, 1, 32, 2, 32, false, 0.8, 1.0f}),
    replay_case_name);

// Residual only, with the exact cache in fp16: K^ = K and V^ = V bit for bit, so the two
// attentions are the same computation: zero KL and error, cosine 1, full mass.
TEST(CpuFusedReplayCases, IdenticalCachesGiveZeroDivergence) {
  ReplayData r = make_data(ReplayCase{4, 2, 64, 0, 50, 2, 32, 2, 32, true, 1.0, 2.0f}, 3);
  cpu_reference::fused_replay_attention(r.args());
  for (std::size_t i = 0; i < r.out.size(); ++i) ASSERT_EQ(r.out_hat[i], r.out[i]);
  for (std::size_t h = 0; h < r.lse.size(); ++h) {
    EXPECT_EQ(r.lse_hat[h], r.lse[h]);
    EXPECT_EQ(r.kl[h], 0.0f);
    EXPECT_EQ(r.rel_err[h], 0.0f);
    EXPECT_FLOAT_EQ(r.cosine[h], 1.0f);
    EXPECT_EQ(r.mass[h], 1.0f);
  }
}

// One token: the softmax weight is 1, so out is that token's exact v row of the query head's kv
// head (h / 3) and out_hat its residual (fp16) row: pins down the GQA mapping.
TEST(CpuFusedReplayCases, GroupedQueryHeadsReadTheirKvHead) {
  ReplayData r = make_data(ReplayCase{6, 2, 64, 0, 1, 2, 32, 2, 32, false, 1.0, 1.0f}, 5);
  cpu_reference::fused_replay_attention(r.args());
  for (int h = 0; h < 6; ++h) {
    const int kvh = h / 3;
    for (int i = 0; i < 64; ++i) {
      ASSERT_EQ(r.out[h * 64 + i], r.v_ex[kvh * 64 + i]);
      ASSERT_EQ(r.out_hat[h * 64 + i], half_bits_to_float(r.v_res[kvh * 64 + i]));
    }
  }
}

// A kv head with no present token: out_hat 0, lse_hat -inf, mass 0, kl 0, rel_err 1, cosine 0;
// the other kv head is unaffected.
TEST(CpuFusedReplayCases, KvHeadWithoutPresentTokens) {
  ReplayData r = make_data(ReplayCase{4, 2, 64, 32, 8, 2, 32, 2, 32, false, 0.5, 1.0f}, 9);
  std::fill(r.present.begin() + r.n(), r.present.end(), std::uint8_t{0});  // kv head 1
  cpu_reference::fused_replay_attention(r.args());
  for (int h = 2; h < 4; ++h) {
    for (int i = 0; i < 64; ++i) ASSERT_EQ(r.out_hat[h * 64 + i], 0.0f);
    EXPECT_EQ(r.lse_hat[h], -std::numeric_limits<float>::infinity());
    EXPECT_EQ(r.mass[h], 0.0f);
    EXPECT_EQ(r.kl[h], 0.0f);
    EXPECT_EQ(r.rel_err[h], 1.0f);
    EXPECT_EQ(r.cosine[h], 0.0f);
  }
  for (int h = 0; h < 2; ++h) {
    EXPECT_GT(r.mass[h], 0.0f);
    EXPECT_LT(r.mass[h], 1.0f);
    EXPECT_TRUE(std::isfinite(r.lse_hat[h]));
  }
}

// 8-bit keys and values: a near-lossless cache (sanity of magnitudes, not a precision claim).
TEST(CpuFusedReplayCases, EightBitCacheIsNearlyExact) {
  ReplayData r = make_data(ReplayCase{4, 1, 128, 512, 16, 8, 32, 8, 32, true, 1.0, 1.0f}, 11);
  cpu_reference::fused_replay_attention(r.args());
  for (std::size_t h = 0; h < r.lse.size(); ++h) {
    EXPECT_LT(r.kl[h], 1e-4) << h;
    EXPECT_LT(r.rel_err[h], 1e-2) << h;
    EXPECT_GT(r.cosine[h], 0.9999f) << h;
  }
}

TEST(CpuFusedReplayCases, RejectsBadArguments) {
  ReplayData r = make_data(ReplayCase{4, 2, 64, 32, 8, 2, 32, 2, 32, false, 1.0, 1.0f}, 1);
  auto expect_bad = [&](auto mutate) {
    FusedReplayArgs a = r.args();
    mutate(a);
    EXPECT_THROW(cpu_reference::fused_replay_attention(a), ConfigError);
    EXPECT_THROW(fused_replay_attention(a), ConfigError);  // GPU launcher: same checks first
  };
  EXPECT_NO_THROW(cpu_reference::fused_replay_attention(r.args()));
  expect_bad([](FusedReplayArgs& a) { a.head_dim = 96; });
  expect_bad([](FusedReplayArgs& a) { a.num_q_heads = 3; });
  expect_bad([](FusedReplayArgs& a) { a.num_kv_heads = 0; });
  expect_bad([](FusedReplayArgs& a) {
    a.num_quant_tokens = 0;
    a.num_residual_tokens = 0;
  });
  expect_bad([](FusedReplayArgs& a) { a.num_quant_tokens = -1; });
  expect_bad([](FusedReplayArgs& a) { a.key_bits = 0; });
  expect_bad([](FusedReplayArgs& a) { a.value_bits = 9; });
  expect_bad([](FusedReplayArgs& a) { a.key_group = 0; });
  expect_bad([](FusedReplayArgs& a) { a.scale = NAN; });
  expect_bad([](FusedReplayArgs& a) { a.key_codes = nullptr; });
  expect_bad([](FusedReplayArgs& a) { a.value_residual = nullptr; });
  expect_bad([](FusedReplayArgs& a) { a.key_exact_f32 = a.value_exact_f32 = nullptr; });
  expect_bad([&](FusedReplayArgs& a) { a.key_exact_f16 = r.k_ex16.data(); });  // both pairs
  expect_bad([](FusedReplayArgs& a) { a.value_exact_f32 = nullptr; });
  expect_bad([](FusedReplayArgs& a) { a.kl = nullptr; });
  expect_bad([](FusedReplayArgs& a) { a.q = nullptr; });
}

TEST(CpuFusedReplayCases, GpuThrowsBackendUnavailableWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is present";
  ReplayData r = make_data(ReplayCase{4, 2, 64, 32, 8, 2, 32, 2, 32, false, 1.0, 1.0f}, 1);
  EXPECT_THROW(fused_replay_attention(r.args()), BackendUnavailable);
}

// --- GPU against the CPU reference -------------------------------------------------------------

// Device copies of a ReplayData; args() points at them.
struct DeviceReplay {
  DeviceBuffer<float> q, k_ex, v_ex;
  DeviceBuffer<std::uint16_t> k_ex16, v_ex16;
  DeviceBuffer<std::uint32_t> k_codes, v_codes;
  DeviceBuffer<std::uint16_t> k_scale, k_min, v_scale, v_min, k_res, v_res;
  DeviceBuffer<std::uint8_t> present;
  DeviceBuffer<float> out_hat, lse_hat, out, lse, rel_err, cosine, kl, mass;

  template <typename T>
  static DeviceBuffer<T> up(const std::vector<T>& v) {
    return DeviceBuffer<T>(std::span<const T>(v));
  }

  explicit DeviceReplay(const ReplayData& r)
      : q(up(r.q)),
        k_ex(up(r.k_ex)),
        v_ex(up(r.v_ex)),
        k_ex16(up(r.k_ex16)),
        v_ex16(up(r.v_ex16)),
        k_codes(up(r.k_codes)),
        v_codes(up(r.v_codes)),
        k_scale(up(r.k_scale)),
        k_min(up(r.k_min)),
        v_scale(up(r.v_scale)),
        v_min(up(r.v_min)),
        k_res(up(r.k_res)),
        v_res(up(r.v_res)),
        present(up(r.present)),
        out_hat(r.out_hat.size()),
        lse_hat(r.lse_hat.size()),
        out(r.out.size()),
        lse(r.lse.size()),
        rel_err(r.rel_err.size()),
        cosine(r.cosine.size()),
        kl(r.kl.size()),
        mass(r.mass.size()) {}

  FusedReplayArgs args(const ReplayData& r) { return bind_args(r.c, *this, !r.present.empty()); }
};

class GpuFusedReplay : public ::testing::TestWithParam<ReplayCase> {};

// Tolerances, against the double reference fed with the same dequantized values (the device
// dequantizes with the reference's exact float operations, so K^/V^ are bit-identical):
//  - out, out_hat: each is a convex combination of v rows accumulated in float, in another
//    order (per-warp online softmax over a slice of a split, then merges); as in the plain
//    attention test we allow 1e-5 * max|v| (~100 float ulps at |v| = 4 -- the typical error,
//    a few ulps times sqrt of the tokens per warp, is ~1e-6).
//  - lse, lse_hat: float dot products of <= 256 terms and float exponentials, ~1e-6 relative:
//    allowed 1e-5 * max(1, |lse|).
//  - mass: exactly 1 without a mask (the device adds the same terms to both sums); with a mask
//    both sums carry ~1e-7 relative error: allowed 1e-5.
//  - kl: computed as C/M + log(S^/M) + (m_s - m_r), whose derivative in each score is
//    p~_t - p^_t, so float score errors (~3e-7 here) enter scaled by the distance between the
//    distributions, and the exponentials' 2-ulp errors enter log(S^/M) directly (~2.4e-7):
//    allowed 2e-6 + 1e-3 * kl.
//  - rel_err, cosine: from out/out_hat, whose per-component tolerance tol_o bounds the change
//    of |out_hat - out| by 2 sqrt(d) tol_o and of |out| by sqrt(d) tol_o: allowed
//    (2 + rel_err) sqrt(d) tol_o / |out|, and 2 sqrt(d) tol_o (1/|out| + 1/|out_hat|) + 1e-6.
TEST_P(GpuFusedReplay, MatchesCpuReference) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  ReplayData ref = make_data(GetParam(), 21);
  cpu_reference::fused_replay_attention(ref.args());
  DeviceReplay dev(ref);
  fused_replay_attention(dev.args(ref));
  const std::vector<float> out = dev.out.to_host(), out_hat = dev.out_hat.to_host();
  const std::vector<float> lse = dev.lse.to_host(), lse_hat = dev.lse_hat.to_host();
  const std::vector<float> mass = dev.mass.to_host(), kl = dev.kl.to_host();
  const std::vector<float> rel_err = dev.rel_err.to_host(), cosine = dev.cosine.to_host();

  const int d = GetParam().head_dim;
  const double tol_o = 1e-5 * std::max(max_abs(ref.v_ex), 1.0);
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    ASSERT_TRUE(std::isfinite(out[i]) && std::isfinite(out_hat[i])) << i;
    const double e1 = std::fabs(static_cast<double>(out[i]) - ref.out[i]);
    const double e2 = std::fabs(static_cast<double>(out_hat[i]) - ref.out_hat[i]);
    if (!(e1 <= tol_o && e2 <= tol_o) && ++bad <= 10) {
      ADD_FAILURE() << "[" << i << "] out " << out[i] << " vs " << ref.out[i] << ", out_hat "
                    << out_hat[i] << " vs " << ref.out_hat[i];
    }
  }
  EXPECT_EQ(bad, 0);
  for (std::size_t h = 0; h < lse.size(); ++h) {
    double on = 0, ohn = 0;
    for (int i = 0; i < d; ++i) {
      on += static_cast<double>(ref.out[h * d + i]) * ref.out[h * d + i];
      ohn += static_cast<double>(ref.out_hat[h * d + i]) * ref.out_hat[h * d + i];
    }
    on = std::sqrt(on);
    ohn = std::sqrt(ohn);
    ASSERT_TRUE(std::isfinite(lse[h]) && std::isfinite(lse_hat[h]) && std::isfinite(kl[h]) &&
                std::isfinite(mass[h]) && std::isfinite(rel_err[h]) && std::isfinite(cosine[h]))
        << "head " << h;
    EXPECT_NEAR(lse[h], ref.lse[h], 1e-5 * std::max(1.0f, std::fabs(ref.lse[h]))) << h;
    EXPECT_NEAR(lse_hat[h], ref.lse_hat[h], 1e-5 * std::max(1.0f, std::fabs(ref.lse_hat[h]))) << h;
    if (ref.present.empty()) {
      EXPECT_EQ(mass[h], 1.0f) << h;
    } else {
      EXPECT_NEAR(mass[h], ref.mass[h], 1e-5) << h;
    }
    EXPECT_NEAR(kl[h], ref.kl[h], 2e-6 + 1e-3 * ref.kl[h]) << h;
    const double sd = std::sqrt(static_cast<double>(d));
    EXPECT_NEAR(rel_err[h], ref.rel_err[h], (2.0 + ref.rel_err[h]) * sd * tol_o / on + 1e-6) << h;
    EXPECT_NEAR(cosine[h], ref.cosine[h], 2.0 * sd * tol_o * (1.0 / on + 1.0 / ohn) + 1e-6) << h;
  }
}

// Residual-only and quantized-only caches, odd token counts (not multiples of the tile, the
// 4-token warp step, the key group or the word block), every head_dim, GQA ratios 1, 2, 3, 4
// and 12 (two blocks per kv head, the second with 4 heads), widths with unused word bits,
// value groups that do not divide head_dim, fp16 and fp32 exact caches, masks, peaked
// softmaxes, and long caches that need hundreds of splits (40k and 128k tokens).
INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuFusedReplay,
    ::testing::Values(ReplayCase{1, 1, 64, 0, 1, 2, 32, 2, 32, true, 1.0, 1.0f},
                      ReplayCase{4, 2, 128, 32, 7, 2, 32, 2, 32, true, 1.0, 1.0f},
                      ReplayCase{8, 2, 256, 256, 1, 4, 32, 4, 32, false, 0.7, 4.0f},
                      ReplayCase{32, 8, 128, 4096, 100, 2, 32, 2, 32, true, 1.0, 1.0f},
                      ReplayCase{3, 1, 64, 1000, 37, 3, 20, 5, 24, false, 0.5, 2.0f},
                      ReplayCase{12, 1, 64, 513, 0, 2, 128, 2, 64, true, 0.9, 1.0f},
                      ReplayCase{8, 8, 256, 777, 128, 6, 32, 7, 32, false, 1.0, 8.0f},
                      ReplayCase{2, 1, 128, 40000, 128, 2, 32, 2, 32, true, 1.0, 1.0f},
                      ReplayCase{2, 1, 64, 131067, 5, 4, 32, 4, 32, false, 0.95, 2.0f}),
    replay_case_name);

// A kv head without present tokens on the device: the -inf maxima must not poison anything.
TEST(GpuFusedReplayCases, KvHeadWithoutPresentTokens) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  ReplayData ref = make_data(ReplayCase{4, 2, 64, 3000, 8, 2, 32, 2, 32, false, 0.5, 1.0f}, 9);
  std::fill(ref.present.begin() + ref.n(), ref.present.end(), std::uint8_t{0});
  cpu_reference::fused_replay_attention(ref.args());
  DeviceReplay dev(ref);
  fused_replay_attention(dev.args(ref));
  const std::vector<float> out_hat = dev.out_hat.to_host(), lse_hat = dev.lse_hat.to_host();
  const std::vector<float> mass = dev.mass.to_host(), kl = dev.kl.to_host();
  const std::vector<float> rel_err = dev.rel_err.to_host(), cosine = dev.cosine.to_host();
  for (int h = 2; h < 4; ++h) {
    for (int i = 0; i < 64; ++i) ASSERT_EQ(out_hat[h * 64 + i], 0.0f);
    EXPECT_EQ(lse_hat[h], -std::numeric_limits<float>::infinity());
    EXPECT_EQ(mass[h], 0.0f);
    EXPECT_EQ(kl[h], 0.0f);
    EXPECT_EQ(rel_err[h], 1.0f);
    EXPECT_EQ(cosine[h], 0.0f);
  }
  for (int h = 0; h < 2; ++h) {
    EXPECT_NEAR(mass[h], ref.mass[h], 1e-5);
    EXPECT_NEAR(kl[h], ref.kl[h], 2e-6 + 1e-3 * ref.kl[h]);
  }
}

// Host memory passed to the launcher is a ConfigError, not a dead context.
TEST(GpuFusedReplayCases, RejectsHostPointers) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  ReplayData ref = make_data(ReplayCase{4, 2, 64, 32, 8, 2, 32, 2, 32, false, 1.0, 1.0f}, 2);
  DeviceReplay dev(ref);
  FusedReplayArgs a = dev.args(ref);
  a.key_codes = ref.k_codes.data();
  EXPECT_THROW(fused_replay_attention(a), ConfigError);
  EXPECT_NO_THROW(fused_replay_attention(dev.args(ref)));
  EXPECT_NO_THROW(device_synchronize());
}

}  // namespace
}  // namespace kvsim::gpu
