// GPU launchers for the replay hot-path kernels. Each has the signature and the semantics of
// its namespace-mate in gpu/cpu_reference.h (read the contracts there), but every pointer is
// device memory (gpu/device_buffer.h). Launchers
//   - check their arguments exactly like the reference (kvsim::ConfigError on a bad size, null
//     or unsupported head_dim) and reject host pointers the device cannot access (ConfigError);
//   - throw kvsim::BackendUnavailable when the build has no CUDA or no GPU is visible;
//   - enqueue the work on the legacy default stream and return without waiting for it (the
//     next copy to the host, or device_synchronize(), waits); a launch failure throws
//     kvsim::gpu::CudaError.
// The fp16 arrays hold __half values; they are typed as their uint16_t bit patterns so that
// this header needs no CUDA headers.
#pragma once

#include <cstdint>

#include "gpu/packing.h"
#include "gpu/replay_types.h"

namespace kvsim::gpu {

// Split-KV decode attention: the tokens of each query head are cut into chunks processed by
// separate blocks (online softmax per warp), then merged by a second kernel through their
// log-sum-exp; a temporary workspace comes from the stream-ordered allocator.
void replay_attention(const float* q,  // [num_q_heads, head_dim]
                      const float* k,  // [num_kv_heads, num_tokens, head_dim]
                      const float* v,  // [num_kv_heads, num_tokens, head_dim]
                      int num_q_heads, int num_kv_heads, std::int64_t num_tokens, int head_dim,
                      float scale,
                      float* out,   // [num_q_heads, head_dim]
                      float* lse);  // [num_q_heads]

// Bit-identical to cpu_reference::quantize_groups (codes, scale and minv).
void quantize_groups(const float* x,  // [num_groups, group_size]
                     std::int64_t num_groups, int group_size, int bits,
                     std::uint8_t* codes,   // [num_groups, group_size]
                     std::uint16_t* scale,  // [num_groups], fp16 (__half) bit patterns
                     std::uint16_t* minv);  // [num_groups], fp16 (__half) bit patterns

// Bit-identical to cpu_reference::dequantize_groups.
void dequantize_groups(const std::uint8_t* codes,   // [num_groups, group_size]
                       const std::uint16_t* scale,  // [num_groups], fp16 (__half) bit patterns
                       const std::uint16_t* minv,   // [num_groups], fp16 (__half) bit patterns
                       std::int64_t num_groups, int group_size,
                       float* x_hat);  // [num_groups, group_size]

// --- fp16 conversion, bit packing, KIVI and SKVQ quantization --------------------------------
// Bit-identical to their cpu_reference namesakes (every float operation is an explicitly
// rounded intrinsic evaluated in the reference's order; fp16 conversions round to nearest even).

void convert_float_to_half(const float* x,  // [count]
                           std::int64_t count,
                           std::uint16_t* out);  // [count], fp16 (__half) bit patterns

// One thread per output word.
void pack_codes(const std::uint8_t* codes,  // [num_rows, row_len]
                std::int64_t num_rows, std::int64_t row_len, int bits,
                std::uint32_t* words);  // [num_rows, words_per_row(row_len, bits)]

// One thread per input word.
void unpack_codes(const std::uint32_t* words,  // [num_rows, words_per_row(row_len, bits)]
                  std::int64_t num_rows, std::int64_t row_len, int bits,
                  std::uint8_t* codes);  // [num_rows, row_len]

// Two kernels: one thread per (head, token group, channel) computes the fp16 scale/min; then
// one thread per output word quantizes and packs its tokens (reading the stored fp16 values).
void kivi_quantize_keys(
    const float* k,  // [num_heads, num_tokens, head_dim]
    int num_heads, std::int64_t num_tokens, int head_dim, int group_size, int bits,
    std::uint32_t* codes,  // [num_heads, words_per_row(num_tokens, bits), head_dim]
    std::uint16_t* scale,  // [num_heads, ceil(num_tokens / G), head_dim], fp16
    std::uint16_t* minv);  // [num_heads, ceil(num_tokens / G), head_dim], fp16

// One thread per word: writes codes_per_word(bits) tokens of one channel.
void kivi_dequantize_keys(const std::uint32_t* codes,  // as kivi_quantize_keys
                          const std::uint16_t* scale, const std::uint16_t* minv, int num_heads,
                          std::int64_t num_tokens, int head_dim, int group_size, int bits,
                          float* k_hat);  // [num_heads, num_tokens, head_dim]

// Two kernels: one thread per (head, token, channel group), then one thread per output word.
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

// One block per row (grid-stride): the permuted row is staged in shared memory, one warp per
// group reduces min/max, one thread per word packs. perm, group_starts and group_clip are
// device arrays; the launcher copies them to the host once per call to check them like the
// reference does (a synchronizing copy of num_channels + 2 * num_groups + 1 values).
void skvq_quantize(const float* x,  // [num_rows, num_channels]
                   std::int64_t num_rows, int num_channels,
                   const std::int32_t* perm,          // [num_channels]
                   const std::int32_t* group_starts,  // [num_groups + 1]
                   int num_groups, int max_int, float clip,
                   const float* group_clip,  // [num_groups] or nullptr
                   std::uint32_t* codes,     // [num_rows, words_per_row(num_channels, code_bits)]
                   std::uint16_t* scale,     // [num_rows, num_groups], fp16 bits
                   std::uint16_t* zero);     // [num_rows, num_groups], fp16 bits

void skvq_dequantize(const std::uint32_t* codes,  // as skvq_quantize
                     const std::uint16_t* scale, const std::uint16_t* zero, std::int64_t num_rows,
                     int num_channels,
                     const std::int32_t* perm,          // [num_channels]
                     const std::int32_t* group_starts,  // [num_groups + 1]
                     int num_groups, int max_int,
                     float* x_hat);  // [num_rows, num_channels]

// --- fused replay attention ------------------------------------------------------------------
// One pass over the packed cache and the exact K/V: grid (num_kv_heads, splits); each block
// stages a tile of tokens (exact K/V converted to float, K^/V^ dequantized on the fly) in shared
// memory once for all the query heads of its kv head; warp (j, r) owns query head j of the group
// and every wph-th token of the tile (wph = ceil(4 / heads per kv head)), with two online
// softmaxes (exact and compressed, separate running maxima) and double-precision scalar sums
// for the KL and the retained mass. A combine kernel (one block per query head) merges the
// per-warp partials and computes the metrics. Scratch comes from the stream-ordered allocator.
// Errors against the double-precision reference: docs/gpu.md and tests/gpu/fused_replay_test.cc.
void fused_replay_attention(const FusedReplayArgs& args);  // every pointer device memory

// --- L2-norm eviction ------------------------------------------------------------------------
// A warp per key computes the norm (the reference's summation order, bit for bit); then one
// block per head runs an 8-pass radix select on the 64-bit patterns of the squared norms and
// compacts the selected positions in ascending order. Identical output to the reference.
void key_norms_topk(const float* k,  // [num_heads, num_tokens, head_dim]
                    int num_heads, std::int64_t num_tokens, int head_dim, std::int64_t keep,
                    TiePreference ties,
                    float* norms,         // [num_heads, num_tokens]
                    std::int32_t* kept);  // [num_heads, keep], ascending positions

// --- MiniCache SLERP merge / restore ---------------------------------------------------------
// A warp per row; double precision with explicitly rounded operations. The sums are reduced in
// a different order than the reference's sequential loop and acos/sin are CUDA's, so results
// can differ from the reference in the last bits of the doubles: direction and norms (fp16)
// are equal unless the exact value lies within ~1e-15 (relative) of an fp16/float rounding
// boundary, distance agrees to ~1e-15 / sin(W). slerp_restore is bit-identical.
void slerp_merge(const float* xa,  // [num_rows, dim]
                 const float* xb,  // [num_rows, dim]
                 std::int64_t num_rows, int dim, double t,
                 std::uint16_t* direction,  // [num_rows, dim], fp16 bits
                 std::uint16_t* norm_a,     // [num_rows], fp16 bits
                 std::uint16_t* norm_b,     // [num_rows], fp16 bits
                 double* distance,          // [num_rows]
                 std::uint8_t* merged);     // [num_rows]

void slerp_restore(const std::uint16_t* direction,  // [num_rows, dim], fp16 bits
                   const std::uint16_t* norm,       // [num_rows], fp16 bits
                   std::int64_t num_rows, int dim,
                   float* x_hat);  // [num_rows, dim]

}  // namespace kvsim::gpu
