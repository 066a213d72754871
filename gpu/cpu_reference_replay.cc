// CPU reference of the fused replay attention (contract: FusedReplayArgs in
// gpu/replay_types.h). Dequantizes the packed cache with the KIVI references, then evaluates
// both attentions and every metric in double precision.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/validate.h"
#include "sim/base/fp16.h"

namespace kvsim::gpu::cpu_reference {

void fused_replay_attention(const FusedReplayArgs& a) {
  detail::validate_fused_replay("cpu_reference::fused_replay_attention", a);
  using std::int64_t;
  using std::size_t;
  const int64_t hkv = a.num_kv_heads;
  const int64_t d = a.head_dim;
  const int64_t nq = a.num_quant_tokens;
  const int64_t nr = a.num_residual_tokens;
  const int64_t n = a.num_tokens();
  const int q_per_kv = a.num_q_heads / a.num_kv_heads;
  const auto cache_size = static_cast<size_t>(hkv * n * d);

  // The cache as the kernel sees it: K^, V^ (dequantized, then the residual) and exact K, V.
  std::vector<float> k_hat(cache_size), v_hat(cache_size), k_ex(cache_size), v_ex(cache_size);
  if (nq > 0) {
    std::vector<float> tmp(static_cast<size_t>(hkv * nq * d));
    kivi_dequantize_keys(a.key_codes, a.key_scale, a.key_min, a.num_kv_heads, nq, a.head_dim,
                         a.key_group, a.key_bits, tmp.data());
    for (int64_t h = 0; h < hkv; ++h) {
      std::copy_n(tmp.begin() + h * nq * d, nq * d, k_hat.begin() + h * n * d);
    }
    kivi_dequantize_values(a.value_codes, a.value_scale, a.value_min, a.num_kv_heads, nq,
                           a.head_dim, a.value_group, a.value_bits, tmp.data());
    for (int64_t h = 0; h < hkv; ++h) {
      std::copy_n(tmp.begin() + h * nq * d, nq * d, v_hat.begin() + h * n * d);
    }
  }
  for (int64_t h = 0; h < hkv; ++h) {
    for (int64_t i = 0; i < nr * d; ++i) {
      k_hat[(h * n + nq) * d + i] = half_bits_to_float(a.key_residual[h * nr * d + i]);
      v_hat[(h * n + nq) * d + i] = half_bits_to_float(a.value_residual[h * nr * d + i]);
    }
  }
  for (size_t i = 0; i < cache_size; ++i) {
    k_ex[i] = a.exact_is_f16() ? half_bits_to_float(a.key_exact_f16[i]) : a.key_exact_f32[i];
    v_ex[i] = a.exact_is_f16() ? half_bits_to_float(a.value_exact_f16[i]) : a.value_exact_f32[i];
  }

  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> raw(static_cast<size_t>(n)), s(static_cast<size_t>(n));
  std::vector<double> o(static_cast<size_t>(d)), o_hat(static_cast<size_t>(d));
  for (int64_t qh = 0; qh < a.num_q_heads; ++qh) {
    const int64_t kvh = qh / q_per_kv;
    const float* q = a.q + qh * d;
    const std::uint8_t* present = a.present != nullptr ? a.present + kvh * n : nullptr;
    auto is_present = [&](int64_t t) { return present == nullptr || present[t] != 0; };

    double m_raw = -kInf;
    double m_s = -kInf;
    for (int64_t t = 0; t < n; ++t) {
      double dot = 0.0;
      double dot_hat = 0.0;
      for (int64_t c = 0; c < d; ++c) {
        dot += static_cast<double>(q[c]) * k_ex[(kvh * n + t) * d + c];
        dot_hat += static_cast<double>(q[c]) * k_hat[(kvh * n + t) * d + c];
      }
      raw[t] = static_cast<double>(a.scale) * dot;
      s[t] = static_cast<double>(a.scale) * dot_hat;
      m_raw = std::max(m_raw, raw[t]);
      if (is_present(t)) m_s = std::max(m_s, s[t]);
    }

    // Exact softmax over all tokens; compressed over the present ones; the KL and mass sums.
    double sum = 0.0, sum_hat = 0.0, mass_sum = 0.0, cross = 0.0;
    std::fill(o.begin(), o.end(), 0.0);
    std::fill(o_hat.begin(), o_hat.end(), 0.0);
    for (int64_t t = 0; t < n; ++t) {
      const double p = std::exp(raw[t] - m_raw);
      sum += p;
      for (int64_t c = 0; c < d; ++c) o[c] += p * v_ex[(kvh * n + t) * d + c];
      if (!is_present(t)) continue;
      mass_sum += p;
      cross += p * (raw[t] - s[t]);
      const double p_hat = std::exp(s[t] - m_s);
      sum_hat += p_hat;
      for (int64_t c = 0; c < d; ++c) o_hat[c] += p_hat * v_hat[(kvh * n + t) * d + c];
    }
    const bool any_present = m_s > -kInf;
    for (int64_t c = 0; c < d; ++c) {
      o[c] /= sum;
      o_hat[c] = any_present ? o_hat[c] / sum_hat : 0.0;
    }
    const double lse = m_raw + std::log(sum);
    const double lse_hat = any_present ? m_s + std::log(sum_hat) : -kInf;
    const double mass = mass_sum / sum;
    // KL(p~ || p^) = E_p~[raw - s] + log sum_P exp(s) - log sum_P exp(raw), which equals the
    // engine's (1/mass) sum p (raw - s) + lse_hat - lse - log(mass).
    double kl = 0.0;
    if (any_present && mass_sum > 0.0) {
      kl = cross / mass_sum + std::log(sum_hat / mass_sum) + (m_s - m_raw);
    }

    double diff = 0.0, on = 0.0, ohn = 0.0, dot = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      diff += (o_hat[c] - o[c]) * (o_hat[c] - o[c]);
      on += o[c] * o[c];
      ohn += o_hat[c] * o_hat[c];
      dot += o_hat[c] * o[c];
    }
    for (int64_t c = 0; c < d; ++c) {
      a.out[qh * d + c] = static_cast<float>(o[c]);
      a.out_hat[qh * d + c] = static_cast<float>(o_hat[c]);
    }
    a.lse[qh] = static_cast<float>(lse);
    a.lse_hat[qh] = static_cast<float>(lse_hat);
    a.rel_err[qh] = static_cast<float>(on > 0 ? std::sqrt(diff / on) : std::sqrt(diff));
    a.cosine[qh] = static_cast<float>(on > 0 && ohn > 0 ? dot / std::sqrt(on * ohn) : 0.0);
    a.mass_retained[qh] = static_cast<float>(std::min(mass, 1.0));
    a.kl[qh] = static_cast<float>(std::max(kl, 0.0));
  }
}

}  // namespace kvsim::gpu::cpu_reference
