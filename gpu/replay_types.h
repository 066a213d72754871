// Argument types shared by the CPU references (gpu/cpu_reference.h) and the GPU launchers
// (gpu/kernels.h) of the replay hot path. Plain C++, no CUDA headers.
#pragma once

#include <cstdint>

namespace kvsim::gpu {

// Which of two keys with EQUAL squared norms key_norms_topk() selects first.
//   kLowerIndex:  the lower position is kept (the usual "stable" order).
//   kHigherIndex: the higher position is kept, i.e. the lower one is evicted first -- the rule
//                 of policies/evict_budget.h, which the `l2norm` policy uses.
enum class TiePreference { kLowerIndex, kHigherIndex };

// One (layer, decode step) of the replay for the fused kernel: a KIVI-packed cache of every KV
// head of the layer, the same tokens in full precision, and the step's queries.
//
// Tokens t in [0, num_quant_tokens) are quantized (layouts of kivi_quantize_keys /
// kivi_quantize_values over those tokens); tokens t in [num_quant_tokens, num_tokens) are the
// fp16 residual, row t - num_quant_tokens of key_residual / value_residual. The full-precision
// ("exact") keys and values cover all num_tokens tokens, as fp32 or as fp16: set exactly one of
// the pairs (key_exact_f32, value_exact_f32) and (key_exact_f16, value_exact_f16).
//
// `present` marks the tokens the compressed cache holds (after an eviction stage, say); the
// exact attention always covers every token. nullptr means every token is present.
//
// Per query head h (kv head h / (num_q_heads / num_kv_heads)), with raw_t = scale q.k_t over the
// exact keys and s_t = scale q.k^_t over the dequantized/residual keys:
//   out, lse          exact attention over all tokens: softmax(raw) . v, log sum_t exp(raw_t)
//   out_hat, lse_hat  compressed attention over the present tokens: softmax(s) . v^, ...
//   mass_retained     sum over present t of p_t, p_t = exp(raw_t - lse)   (1 with all present)
//   kl                KL(p~ || p^) with p~ = p / mass on the present tokens, p^ = softmax(s):
//                     (1/mass) sum_present p_t (raw_t - s_t) + lse_hat - lse - log(mass)
//   rel_err           |out_hat - out| / |out|   (|out_hat - out| when |out| = 0)
//   cosine            out_hat . out / (|out_hat| |out|)   (0 when either is 0)
// as in sim/engine.cc (kl clamped to >= 0 and mass to <= 1 like there). A head whose kv head has
// no present token gets out_hat = 0, lse_hat = -inf, mass = 0, kl = 0 (so rel_err = 1 and
// cosine = 0 unless out = 0).
struct FusedReplayArgs {
  // --- shape ---
  int num_q_heads = 0;
  int num_kv_heads = 0;                  // num_q_heads % num_kv_heads == 0
  int head_dim = 0;                      // 64, 128 or 256
  std::int64_t num_quant_tokens = 0;     // >= 0
  std::int64_t num_residual_tokens = 0;  // >= 0; num_tokens = the sum, > 0
  float scale = 0.0f;                    // softmax scale, finite

  // --- quantization (KIVI: keys per channel over token groups, values per token) ---
  int key_bits = 2;      // 1..8
  int key_group = 32;    // tokens per key group (the last group may be partial)
  int value_bits = 2;    // 1..8
  int value_group = 32;  // channels per value group (the last group may be partial)

  // --- inputs (Hkv = num_kv_heads, d = head_dim, nq = num_quant_tokens, nr = residual) ---
  const float* q = nullptr;  // [num_q_heads, d]
  // [Hkv, words_per_row(nq, key_bits), d]: word (h, b, c) packs tokens b*cpw .. of channel c
  const std::uint32_t* key_codes = nullptr;
  const std::uint16_t* key_scale = nullptr;  // [Hkv, ceil(nq / key_group), d], fp16 bits
  const std::uint16_t* key_min = nullptr;    // [Hkv, ceil(nq / key_group), d], fp16 bits
  // [Hkv, nq, words_per_row(d, value_bits)]: one packed row per token
  const std::uint32_t* value_codes = nullptr;
  const std::uint16_t* value_scale = nullptr;      // [Hkv, nq, ceil(d / value_group)], fp16 bits
  const std::uint16_t* value_min = nullptr;        // [Hkv, nq, ceil(d / value_group)], fp16 bits
  const std::uint16_t* key_residual = nullptr;     // [Hkv, nr, d], fp16 bits
  const std::uint16_t* value_residual = nullptr;   // [Hkv, nr, d], fp16 bits
  const float* key_exact_f32 = nullptr;            // [Hkv, nq + nr, d]  (or the fp16 pair)
  const float* value_exact_f32 = nullptr;          // [Hkv, nq + nr, d]
  const std::uint16_t* key_exact_f16 = nullptr;    // [Hkv, nq + nr, d], fp16 bits
  const std::uint16_t* value_exact_f16 = nullptr;  // [Hkv, nq + nr, d], fp16 bits
  const std::uint8_t* present = nullptr;           // [Hkv, nq + nr], nonzero = present; optional

  // --- outputs ---
  float* out_hat = nullptr;        // [num_q_heads, d]
  float* lse_hat = nullptr;        // [num_q_heads]
  float* out = nullptr;            // [num_q_heads, d]
  float* lse = nullptr;            // [num_q_heads]
  float* rel_err = nullptr;        // [num_q_heads]
  float* cosine = nullptr;         // [num_q_heads]
  float* kl = nullptr;             // [num_q_heads]
  float* mass_retained = nullptr;  // [num_q_heads]

  std::int64_t num_tokens() const { return num_quant_tokens + num_residual_tokens; }
  bool exact_is_f16() const { return key_exact_f16 != nullptr; }
};

}  // namespace kvsim::gpu
