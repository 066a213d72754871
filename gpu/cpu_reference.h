// CPU reference implementations of the replay hot-path kernels. They define the semantics that
// the GPU launchers in gpu/kernels.h reproduce, take the same arguments (host pointers here,
// device pointers there), and accept exactly the same inputs (gpu/validate.h): any bad size,
// null pointer or unsupported head_dim throws kvsim::ConfigError. Outputs must not overlap
// inputs. Buffers are dense, row-major, with the shapes given next to each pointer.
#pragma once

#include <cstdint>

namespace kvsim::gpu::cpu_reference {

// Decode attention of one (layer, step) over the dequantized cache.
//
// Query head h reads kv head h / (num_q_heads / num_kv_heads) (grouped-query attention).
// With s_t = scale * dot(q[h], k[kvh, t]) for t in [0, num_tokens):
//   out[h] = sum_t softmax(s)_t * v[kvh, t]     lse[h] = log(sum_t exp(s_t))  (natural log)
// Requirements: num_q_heads > 0, num_kv_heads > 0, num_q_heads % num_kv_heads == 0,
// num_tokens > 0, head_dim in {64, 128, 256}, scale finite; inputs finite.
// The reference subtracts the maximum score and accumulates in double, rounding the results to
// float once at the end.
void replay_attention(const float* q,  // [num_q_heads, head_dim]
                      const float* k,  // [num_kv_heads, num_tokens, head_dim]
                      const float* v,  // [num_kv_heads, num_tokens, head_dim]
                      int num_q_heads, int num_kv_heads, std::int64_t num_tokens, int head_dim,
                      float scale,
                      float* out,   // [num_q_heads, head_dim]
                      float* lse);  // [num_q_heads]

// Asymmetric min/max round-to-nearest quantization of contiguous groups to `bits` (1..8).
//
// Per group, in float32 arithmetic (every operation rounded to float, no fused multiply-add):
//   mn = min x, mx = max x                      (a -0 result counts as +0)
//   mn16 = to_half(mn), scale16 = to_half((mx - mn) / (2^bits - 1))     (round to nearest even)
//   if scale16 == 0: code = 0 for every element
//   else:            code = nearbyint(clamp((x - mn16) / scale16, 0, 2^bits - 1))   (ties to even)
// where mn16 and scale16 are used as the floats equal to the stored half values. scale[g] and
// minv[g] receive the fp16 bit patterns of scale16 and mn16 (see gpu/half.h). Inputs must be
// finite and within the fp16 range. num_groups == 0 is a no-op (pointers may then be null).
void quantize_groups(const float* x,  // [num_groups, group_size]
                     std::int64_t num_groups, int group_size, int bits,
                     std::uint8_t* codes,   // [num_groups, group_size]
                     std::uint16_t* scale,  // [num_groups], fp16 bit patterns
                     std::uint16_t* minv);  // [num_groups], fp16 bit patterns

// Inverse of quantize_groups: x_hat = float(code) * scale16 + mn16, in float32. (The product is
// exact -- at most 8 + 11 significant bits -- so fused and unfused evaluation agree.)
void dequantize_groups(const std::uint8_t* codes,   // [num_groups, group_size]
                       const std::uint16_t* scale,  // [num_groups], fp16 bit patterns
                       const std::uint16_t* minv,   // [num_groups], fp16 bit patterns
                       std::int64_t num_groups, int group_size,
                       float* x_hat);  // [num_groups, group_size]

}  // namespace kvsim::gpu::cpu_reference
