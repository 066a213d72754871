// Argument checks shared by the CPU references and the GPU launchers, so that both accept
// exactly the same inputs. Every failure is a kvsim::ConfigError naming the function.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "gpu/dispatch.h"
#include "gpu/packing.h"
#include "gpu/replay_types.h"
#include "sim/base/errors.h"

namespace kvsim::gpu::detail {

[[noreturn]] inline void bad_argument(const char* what, const std::string& msg) {
  throw kvsim::ConfigError(std::string(what) + ": " + msg);
}

inline void require_non_null(const char* what, const void* ptr, const char* name) {
  if (ptr == nullptr) bad_argument(what, std::string("`") + name + "` is null");
}

inline void validate_group_shape(const char* what, std::int64_t num_groups, int group_size) {
  if (num_groups < 0)
    bad_argument(what, "num_groups must be >= 0, got " + std::to_string(num_groups));
  if (group_size <= 0)
    bad_argument(what, "group_size must be > 0, got " + std::to_string(group_size));
  if (num_groups > std::numeric_limits<std::int64_t>::max() / group_size) {
    bad_argument(what, "num_groups * group_size overflows 64 bits");
  }
}

// Null pointers are accepted when num_groups == 0 (nothing is read or written).
inline void validate_quantize(const char* what, const void* x, const void* codes, const void* scale,
                              const void* minv, std::int64_t num_groups, int group_size, int bits) {
  validate_group_shape(what, num_groups, group_size);
  if (bits < 1 || bits > 8) bad_argument(what, "bits must be in 1..8, got " + std::to_string(bits));
  if (num_groups == 0) return;
  require_non_null(what, x, "x");
  require_non_null(what, codes, "codes");
  require_non_null(what, scale, "scale");
  require_non_null(what, minv, "minv");
}

inline void validate_dequantize(const char* what, const void* codes, const void* scale,
                                const void* minv, std::int64_t num_groups, int group_size,
                                const void* x_hat) {
  validate_group_shape(what, num_groups, group_size);
  if (num_groups == 0) return;
  require_non_null(what, codes, "codes");
  require_non_null(what, scale, "scale");
  require_non_null(what, minv, "minv");
  require_non_null(what, x_hat, "x_hat");
}

// --- kernels of the replay hot path beyond attention and plain group quantization ---------

// Throws unless a * b * c (all >= 0) fits in 62 bits (so that byte counts of any element type
// up to 4 bytes still fit in a signed 64-bit integer).
inline void require_product_fits(const char* what, std::int64_t a, std::int64_t b, std::int64_t c,
                                 const char* name) {
  constexpr std::int64_t kLimit = std::int64_t{1} << 62;
  if (a < 0 || b < 0 || c < 0) bad_argument(what, std::string(name) + ": negative size");
  if (a == 0 || b == 0 || c == 0) return;
  if (a > kLimit / b || a * b > kLimit / c) {
    bad_argument(what, std::string(name) + " overflows 64 bits");
  }
}

inline void require_bits(const char* what, int bits, const char* name) {
  if (bits < 1 || bits > 8) {
    bad_argument(what, std::string(name) + " must be in 1..8, got " + std::to_string(bits));
  }
}

inline void validate_convert_half(const char* what, const void* x, std::int64_t count,
                                  const void* out) {
  if (count < 0) bad_argument(what, "count must be >= 0, got " + std::to_string(count));
  if (count == 0) return;
  require_non_null(what, x, "x");
  require_non_null(what, out, "out");
}

// pack_codes / unpack_codes. Null pointers are accepted when there is nothing to do.
inline void validate_pack(const char* what, const void* codes, const void* words,
                          std::int64_t num_rows, std::int64_t row_len, int bits) {
  if (num_rows < 0) bad_argument(what, "num_rows must be >= 0, got " + std::to_string(num_rows));
  if (row_len < 0) bad_argument(what, "row_len must be >= 0, got " + std::to_string(row_len));
  require_bits(what, bits, "bits");
  require_product_fits(what, num_rows, row_len, 1, "num_rows * row_len");
  if (num_rows == 0 || row_len == 0) return;
  require_non_null(what, codes, "codes");
  require_non_null(what, words, "words");
}

// kivi_{quantize,dequantize}_{keys,values}: `x` is the float side (input of quantize, output of
// dequantize). num_tokens == 0 is a no-op (pointers may then be null).
inline void validate_kivi(const char* what, const void* x, const void* codes, const void* scale,
                          const void* minv, int num_heads, std::int64_t num_tokens, int head_dim,
                          int group_size, int bits) {
  if (num_heads <= 0) bad_argument(what, "num_heads must be > 0, got " + std::to_string(num_heads));
  if (num_tokens < 0)
    bad_argument(what, "num_tokens must be >= 0, got " + std::to_string(num_tokens));
  if (head_dim <= 0) bad_argument(what, "head_dim must be > 0, got " + std::to_string(head_dim));
  if (group_size <= 0)
    bad_argument(what, "group_size must be > 0, got " + std::to_string(group_size));
  require_bits(what, bits, "bits");
  require_product_fits(what, num_heads, num_tokens, head_dim, "num_heads * num_tokens * head_dim");
  if (num_tokens > std::numeric_limits<std::int32_t>::max()) {
    bad_argument(what, "num_tokens must fit in 31 bits");
  }
  if (num_tokens == 0) return;
  require_non_null(what, x, "x");
  require_non_null(what, codes, "codes");
  require_non_null(what, scale, "scale");
  require_non_null(what, minv, "minv");
}

// Largest SKVQ row the kernels accept (a row is staged in shared memory).
inline constexpr int kSkvqMaxChannels = 4096;

inline bool is_skvq_max_int(int max_int) {
  return max_int == 2 || max_int == 1 || max_int == 3 || max_int == 7 || max_int == 15 ||
         max_int == 31 || max_int == 63 || max_int == 127 || max_int == 255;
}

// Scalar arguments of skvq_quantize / skvq_dequantize (`x` is the float side).
inline void validate_skvq(const char* what, const void* x, const void* codes, const void* scale,
                          const void* zero, const void* perm, const void* group_starts,
                          std::int64_t num_rows, int num_channels, int num_groups, int max_int) {
  if (num_rows < 0) bad_argument(what, "num_rows must be >= 0, got " + std::to_string(num_rows));
  if (num_channels <= 0 || num_channels > kSkvqMaxChannels) {
    bad_argument(what, "num_channels must be in 1.." + std::to_string(kSkvqMaxChannels) + ", got " +
                           std::to_string(num_channels));
  }
  if (num_groups <= 0 || num_groups > num_channels) {
    bad_argument(what, "num_groups must be in 1..num_channels, got " + std::to_string(num_groups));
  }
  if (!is_skvq_max_int(max_int)) {
    bad_argument(what, "max_int must be 2 (ternary) or 2^b - 1 with b in 1..8, got " +
                           std::to_string(max_int));
  }
  require_product_fits(what, num_rows, num_channels, 1, "num_rows * num_channels");
  require_non_null(what, perm, "perm");
  require_non_null(what, group_starts, "group_starts");
  if (num_rows == 0) return;
  require_non_null(what, x, "x");
  require_non_null(what, codes, "codes");
  require_non_null(what, scale, "scale");
  require_non_null(what, zero, "zero");
}

inline void validate_clip(const char* what, float clip, const char* name) {
  if (!(clip > 0.0f) || !std::isfinite(clip)) {
    bad_argument(what, std::string(name) + " must be finite and > 0");
  }
}

// Contents of the SKVQ layout arrays (host memory): perm a permutation of [0, num_channels),
// group_starts strictly increasing from 0 to num_channels, clips finite and > 0.
inline void validate_skvq_layout(const char* what, const std::int32_t* perm,
                                 const std::int32_t* group_starts, const float* group_clip,
                                 int num_channels, int num_groups) {
  std::string seen(static_cast<std::size_t>(num_channels), '\0');
  for (int j = 0; j < num_channels; ++j) {
    const std::int32_t c = perm[j];
    if (c < 0 || c >= num_channels || seen[static_cast<std::size_t>(c)]) {
      bad_argument(what, "perm is not a permutation of 0.." + std::to_string(num_channels - 1) +
                             " (entry " + std::to_string(j) + " = " + std::to_string(c) + ")");
    }
    seen[static_cast<std::size_t>(c)] = 1;
  }
  if (group_starts[0] != 0 || group_starts[num_groups] != num_channels) {
    bad_argument(what, "group_starts must begin at 0 and end at num_channels");
  }
  for (int g = 0; g < num_groups; ++g) {
    if (group_starts[g + 1] <= group_starts[g]) {
      bad_argument(what, "group_starts must be strictly increasing (group " + std::to_string(g) +
                             " is empty)");
    }
  }
  if (group_clip != nullptr) {
    for (int g = 0; g < num_groups; ++g) validate_clip(what, group_clip[g], "group_clip[g]");
  }
}

inline void validate_fused_replay(const char* what, const FusedReplayArgs& a) {
  if (a.num_q_heads <= 0)
    bad_argument(what, "num_q_heads must be > 0, got " + std::to_string(a.num_q_heads));
  if (a.num_kv_heads <= 0)
    bad_argument(what, "num_kv_heads must be > 0, got " + std::to_string(a.num_kv_heads));
  if (a.num_q_heads % a.num_kv_heads != 0) {
    bad_argument(what, "num_q_heads (" + std::to_string(a.num_q_heads) +
                           ") must be a multiple of num_kv_heads (" +
                           std::to_string(a.num_kv_heads) + ")");
  }
  if (!is_supported_head_dim(a.head_dim)) {
    bad_argument(
        what, "unsupported head_dim " + std::to_string(a.head_dim) + " (supported: 64, 128, 256)");
  }
  if (a.num_quant_tokens < 0 || a.num_residual_tokens < 0) {
    bad_argument(what, "token counts must be >= 0");
  }
  if (a.num_quant_tokens > std::numeric_limits<std::int32_t>::max() ||
      a.num_residual_tokens > std::numeric_limits<std::int32_t>::max() || a.num_tokens() <= 0 ||
      a.num_tokens() > std::numeric_limits<std::int32_t>::max()) {
    bad_argument(what, "num_quant_tokens + num_residual_tokens must be in 1..2^31 - 1");
  }
  require_product_fits(what, a.num_kv_heads, a.num_tokens(), a.head_dim,
                       "num_kv_heads * num_tokens * head_dim");
  if (!std::isfinite(a.scale)) bad_argument(what, "scale must be finite");
  require_bits(what, a.key_bits, "key_bits");
  require_bits(what, a.value_bits, "value_bits");
  if (a.key_group <= 0) bad_argument(what, "key_group must be > 0");
  if (a.value_group <= 0) bad_argument(what, "value_group must be > 0");

  require_non_null(what, a.q, "q");
  if (a.num_quant_tokens > 0) {
    require_non_null(what, a.key_codes, "key_codes");
    require_non_null(what, a.key_scale, "key_scale");
    require_non_null(what, a.key_min, "key_min");
    require_non_null(what, a.value_codes, "value_codes");
    require_non_null(what, a.value_scale, "value_scale");
    require_non_null(what, a.value_min, "value_min");
  }
  if (a.num_residual_tokens > 0) {
    require_non_null(what, a.key_residual, "key_residual");
    require_non_null(what, a.value_residual, "value_residual");
  }
  const bool f32 = a.key_exact_f32 != nullptr || a.value_exact_f32 != nullptr;
  const bool f16 = a.key_exact_f16 != nullptr || a.value_exact_f16 != nullptr;
  if (f32 == f16) {
    bad_argument(what,
                 "give exactly one of the exact pairs (key_exact_f32, value_exact_f32) "
                 "and (key_exact_f16, value_exact_f16)");
  }
  if (f32) {
    require_non_null(what, a.key_exact_f32, "key_exact_f32");
    require_non_null(what, a.value_exact_f32, "value_exact_f32");
  } else {
    require_non_null(what, a.key_exact_f16, "key_exact_f16");
    require_non_null(what, a.value_exact_f16, "value_exact_f16");
  }
  require_non_null(what, a.out_hat, "out_hat");
  require_non_null(what, a.lse_hat, "lse_hat");
  require_non_null(what, a.out, "out");
  require_non_null(what, a.lse, "lse");
  require_non_null(what, a.rel_err, "rel_err");
  require_non_null(what, a.cosine, "cosine");
  require_non_null(what, a.kl, "kl");
  require_non_null(what, a.mass_retained, "mass_retained");
}

// key_norms_topk. num_tokens == 0 is a no-op; kept may be null when keep == 0.
inline void validate_norms_topk(const char* what, const void* k, int num_heads,
                                std::int64_t num_tokens, int head_dim, std::int64_t keep,
                                const void* norms, const void* kept) {
  if (num_heads <= 0) bad_argument(what, "num_heads must be > 0, got " + std::to_string(num_heads));
  if (num_tokens < 0 || num_tokens > std::numeric_limits<std::int32_t>::max()) {
    bad_argument(what, "num_tokens must be in 0..2^31 - 1, got " + std::to_string(num_tokens));
  }
  if (head_dim <= 0) bad_argument(what, "head_dim must be > 0, got " + std::to_string(head_dim));
  if (keep < 0 || keep > num_tokens) {
    bad_argument(what, "keep must be in 0..num_tokens, got " + std::to_string(keep));
  }
  require_product_fits(what, num_heads, num_tokens, head_dim, "num_heads * num_tokens * head_dim");
  if (num_tokens == 0) return;
  require_non_null(what, k, "k");
  require_non_null(what, norms, "norms");
  if (keep > 0) require_non_null(what, kept, "kept");
}

inline void validate_slerp_merge(const char* what, const void* xa, const void* xb,
                                 std::int64_t num_rows, int dim, double t, const void* direction,
                                 const void* norm_a, const void* norm_b, const void* distance,
                                 const void* merged) {
  if (num_rows < 0) bad_argument(what, "num_rows must be >= 0, got " + std::to_string(num_rows));
  if (dim <= 0) bad_argument(what, "dim must be > 0, got " + std::to_string(dim));
  if (!(t >= 0.0 && t <= 1.0)) bad_argument(what, "t must be in [0, 1]");
  require_product_fits(what, num_rows, dim, 1, "num_rows * dim");
  if (num_rows == 0) return;
  require_non_null(what, xa, "xa");
  require_non_null(what, xb, "xb");
  require_non_null(what, direction, "direction");
  require_non_null(what, norm_a, "norm_a");
  require_non_null(what, norm_b, "norm_b");
  require_non_null(what, distance, "distance");
  require_non_null(what, merged, "merged");
}

inline void validate_slerp_restore(const char* what, const void* direction, const void* norm,
                                   std::int64_t num_rows, int dim, const void* x_hat) {
  if (num_rows < 0) bad_argument(what, "num_rows must be >= 0, got " + std::to_string(num_rows));
  if (dim <= 0) bad_argument(what, "dim must be > 0, got " + std::to_string(dim));
  require_product_fits(what, num_rows, dim, 1, "num_rows * dim");
  if (num_rows == 0) return;
  require_non_null(what, direction, "direction");
  require_non_null(what, norm, "norm");
  require_non_null(what, x_hat, "x_hat");
}

}  // namespace kvsim::gpu::detail
