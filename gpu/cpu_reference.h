// CPU reference implementations of the replay hot-path kernels. They define the semantics that
// the GPU launchers in gpu/kernels.h reproduce, take the same arguments (host pointers here,
// device pointers there), and accept exactly the same inputs (gpu/validate.h): any bad size,
// null pointer or unsupported head_dim throws kvsim::ConfigError. Outputs must not overlap
// inputs. Buffers are dense, row-major, with the shapes given next to each pointer.
#pragma once

#include <cstdint>

#include "gpu/packing.h"
#include "gpu/replay_types.h"

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

// --- fp16 conversion -----------------------------------------------------------------------

// out[i] = fp16 bits of x[i], round to nearest even (gpu/half.h; CUDA's __float2half_rn).
// count == 0 is a no-op.
void convert_float_to_half(const float* x,  // [count]
                           std::int64_t count,
                           std::uint16_t* out);  // [count], fp16 bit patterns

// --- bit packing (layout: gpu/packing.h) ---------------------------------------------------

// Packs each row of `row_len` codes into words_per_row(row_len, bits) words. Only the low
// `bits` bits of a code are used; unused word bits are zero. Empty shapes are no-ops.
void pack_codes(const std::uint8_t* codes,  // [num_rows, row_len]
                std::int64_t num_rows, std::int64_t row_len, int bits,
                std::uint32_t* words);  // [num_rows, words_per_row(row_len, bits)]

// Inverse of pack_codes (ignores the unused bits).
void unpack_codes(const std::uint32_t* words,  // [num_rows, words_per_row(row_len, bits)]
                  std::int64_t num_rows, std::int64_t row_len, int bits,
                  std::uint8_t* codes);  // [num_rows, row_len]

// --- KIVI (methods.md: keys per channel over token groups, values per token) ---------------
//
// Both use the rule of quantize_groups above (asymmetric min/max RTN, fp16 scale and min,
// ties to even, scale16 == 0 -> code 0), bit for bit; they differ only in which elements form
// a group and in how the codes are packed. Requirements: num_heads > 0, num_tokens >= 0 (0 is a
// no-op), head_dim > 0, group_size > 0, bits in 1..8, inputs finite and within the fp16 range.
// The last group along the grouped axis may be partial.

// Keys: group (h, g, c) = channel c of tokens [g*G, min((g+1)*G, num_tokens)) of head h.
// Codes are packed along tokens (KIVI packs its transposed keys this way): word (h, b, c) holds
// tokens [b*cpw, (b+1)*cpw) of channel c, cpw = codes_per_word(bits). The words are stored
// token-block major, so that the words of one block of tokens are contiguous.
void kivi_quantize_keys(
    const float* k,  // [num_heads, num_tokens, head_dim]
    int num_heads, std::int64_t num_tokens, int head_dim, int group_size, int bits,
    std::uint32_t* codes,  // [num_heads, words_per_row(num_tokens, bits), head_dim]
    std::uint16_t* scale,  // [num_heads, ceil(num_tokens / G), head_dim], fp16
    std::uint16_t* minv);  // [num_heads, ceil(num_tokens / G), head_dim], fp16

// k_hat = float(code) * scale16 + min16, in float32 (exact product; see dequantize_groups).
void kivi_dequantize_keys(const std::uint32_t* codes,  // as kivi_quantize_keys
                          const std::uint16_t* scale, const std::uint16_t* minv, int num_heads,
                          std::int64_t num_tokens, int head_dim, int group_size, int bits,
                          float* k_hat);  // [num_heads, num_tokens, head_dim]

// Values: group (h, t, g) = channels [g*G, min((g+1)*G, head_dim)) of token t of head h. Each
// token's head_dim codes form one packed row.
void kivi_quantize_values(
    const float* v,  // [num_heads, num_tokens, head_dim]
    int num_heads, std::int64_t num_tokens, int head_dim, int group_size, int bits,
    std::uint32_t* codes,  // [num_heads, num_tokens, words_per_row(head_dim, bits)]
    std::uint16_t* scale,  // [num_heads, num_tokens, ceil(head_dim / G)], fp16
    std::uint16_t* minv);  // [num_heads, num_tokens, ceil(head_dim / G)], fp16

void kivi_dequantize_values(const std::uint32_t* codes,  // as kivi_quantize_values
                            const std::uint16_t* scale, const std::uint16_t* minv, int num_heads,
                            std::int64_t num_tokens, int head_dim, int group_size, int bits,
                            float* v_hat);  // [num_heads, num_tokens, head_dim]

// --- SKVQ (methods.md: channel reordering + clipped dynamic quantization, per token) --------
//
// Each row (a token's channels: one KV head's head_dim, or a whole layer's) is permuted,
// y[j] = x[perm[j]], and cut into the groups [group_starts[g], group_starts[g+1]) of permuted
// slots (k-means clusters, or contiguous groups of g channels without reordering). Per group,
// with a = group_clip[g] (or `clip` when group_clip is null), in float32 without fused
// multiply-add (a -0 min/max/gmin counts as +0):
//   gmin = a * min y, gmax = a * max y
//   scale16 = to_half(max((gmax - gmin) / max_int, 1e-5)), zero16 = to_half(gmin)
//   code = nearbyint(clamp((y - zero16) / scale16, 0, max_int))   (ties to even; 0 if scale16 == 0)
// as policies/clipped_quantizer.cc does with fp16 metadata. max_int = 2 is ternary ("1.5 bits",
// packed in 2 bits), otherwise 2^b - 1 for b in 1..8 (packed in b bits). Codes are packed per
// row in permuted slot order with code_bits_for_max(max_int) bits.
// Requirements: num_rows >= 0 (0: no-op, but the layout is still checked), num_channels in
// 1..4096, perm a permutation of [0, num_channels), group_starts strictly increasing from 0 to
// num_channels (num_groups + 1 entries), clip (or every group_clip) finite and > 0, max_int as
// above, inputs finite and within the fp16 range.
void skvq_quantize(const float* x,  // [num_rows, num_channels]
                   std::int64_t num_rows, int num_channels,
                   const std::int32_t* perm,          // [num_channels]
                   const std::int32_t* group_starts,  // [num_groups + 1]
                   int num_groups, int max_int, float clip,
                   const float* group_clip,  // [num_groups] or nullptr
                   std::uint32_t* codes,     // [num_rows, words_per_row(num_channels, code_bits)]
                   std::uint16_t* scale,     // [num_rows, num_groups], fp16 bits
                   std::uint16_t* zero);     // [num_rows, num_groups], fp16 bits

// x_hat[perm[j]] = float(code_j) * scale16 + zero16 in float32 (back in the original order).
void skvq_dequantize(const std::uint32_t* codes,  // as skvq_quantize
                     const std::uint16_t* scale, const std::uint16_t* zero, std::int64_t num_rows,
                     int num_channels,
                     const std::int32_t* perm,          // [num_channels]
                     const std::int32_t* group_starts,  // [num_groups + 1]
                     int num_groups, int max_int,
                     float* x_hat);  // [num_rows, num_channels]

// --- fused replay attention ------------------------------------------------------------------

// The compressed and the exact attention of one (layer, step) and the fidelity metrics per
// query head (see FusedReplayArgs in gpu/replay_types.h for the inputs and every formula).
// Dequantizes the cache exactly like kivi_dequantize_keys / kivi_dequantize_values, then works
// in double precision (scores, exponentials, sums, metrics), rounding each output to float once.
void fused_replay_attention(const FusedReplayArgs& args);

// --- L2-norm eviction ------------------------------------------------------------------------

// Per head h: norms[h, t] = |k[h, t]| (float) and the `keep` positions with the smallest norms,
// in ascending position order, in kept[h, 0..keep). Equal norms are ordered by `ties`.
// The squared norm is summed in double in a fixed order that the GPU reproduces exactly: lane
// l in 0..31 sums k[c]^2 for c = l, l + 32, ... (in that order), then the 32 partial sums are
// combined by a butterfly, p[l] += p[l ^ m] for m = 16, 8, 4, 2, 1, and p[0] is the result;
// norms = float(sqrt(sum)). Keys are ranked by that double sum, so selection is identical on
// both sides. Requirements: num_heads > 0, num_tokens in 0..2^31-1 (0: no-op), head_dim > 0,
// 0 <= keep <= num_tokens (kept may be null when keep == 0), inputs finite.
void key_norms_topk(const float* k,  // [num_heads, num_tokens, head_dim]
                    int num_heads, std::int64_t num_tokens, int head_dim, std::int64_t keep,
                    TiePreference ties,
                    float* norms,         // [num_heads, num_tokens]
                    std::int32_t* kept);  // [num_heads, keep], ascending positions

// --- MiniCache SLERP merge / restore ---------------------------------------------------------

// Per row r (a (token, head) pair; dim = head_dim), the math of minicache_slerp()
// (policies/slerp.h, used by policies/minicache.cc), in double: na = |xa|, nb = |xb|,
// W = acos(clamp(xa.xb / (na nb), -1, 1)), distance = W / pi,
//   (wa, wb) = (sin((1-t)W) / sin W, sin(tW) / sin W), or (1-t, t) when W < 1e-4,
//   e = wa xa / na + wb xb / nb,  direction = to_half(float(e / |e|)),
// norm_a = to_half(float(na)), norm_b = to_half(float(nb)), merged[r] = 1. Without a direction
// (na, nb or |e| is 0: minicache.cc retains such tokens) merged[r] = 0 and direction = 0;
// distance is W / pi whenever na, nb > 0, else 0.
// The sums run sequentially over c in double, as in policies/slerp.h.
// Requirements: num_rows >= 0 (0: no-op), dim > 0, t in [0, 1], inputs finite.
void slerp_merge(const float* xa,  // [num_rows, dim]  (layer S+2i)
                 const float* xb,  // [num_rows, dim]  (layer S+2i+1)
                 std::int64_t num_rows, int dim, double t,
                 std::uint16_t* direction,  // [num_rows, dim], fp16 bits
                 std::uint16_t* norm_a,     // [num_rows], fp16 bits
                 std::uint16_t* norm_b,     // [num_rows], fp16 bits
                 double* distance,          // [num_rows], W / pi in [0, 1]
                 std::uint8_t* merged);     // [num_rows], 1 = direction defined

// x_hat[r, c] = float(norm[r]) * float(direction[r, c]) in float32 (minicache.cc's restore).
void slerp_restore(const std::uint16_t* direction,  // [num_rows, dim], fp16 bits
                   const std::uint16_t* norm,       // [num_rows], fp16 bits
                   std::int64_t num_rows, int dim,
                   float* x_hat);  // [num_rows, dim]

}  // namespace kvsim::gpu::cpu_reference
