// Argument checks shared by the CPU references and the GPU launchers, so that both accept
// exactly the same inputs. Every failure is a kvsim::ConfigError naming the function.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "gpu/dispatch.h"
#include "sim/errors.h"

namespace kvsim::gpu::detail {

[[noreturn]] inline void bad_argument(const char* what, const std::string& msg) {
  throw kvsim::ConfigError(std::string(what) + ": " + msg);
}

inline void require_non_null(const char* what, const void* ptr, const char* name) {
  if (ptr == nullptr) bad_argument(what, std::string("`") + name + "` is null");
}

inline void validate_attention(const char* what, const void* q, const void* k, const void* v,
                               const void* out, const void* lse, int num_q_heads, int num_kv_heads,
                               std::int64_t num_tokens, int head_dim, float scale) {
  if (num_q_heads <= 0)
    bad_argument(what, "num_q_heads must be > 0, got " + std::to_string(num_q_heads));
  if (num_kv_heads <= 0)
    bad_argument(what, "num_kv_heads must be > 0, got " + std::to_string(num_kv_heads));
  if (num_q_heads % num_kv_heads != 0) {
    bad_argument(what, "num_q_heads (" + std::to_string(num_q_heads) +
                           ") must be a multiple of num_kv_heads (" + std::to_string(num_kv_heads) +
                           ")");
  }
  if (num_tokens <= 0)
    bad_argument(what, "num_tokens must be > 0, got " + std::to_string(num_tokens));
  if (!is_supported_head_dim(head_dim)) {
    bad_argument(what,
                 "unsupported head_dim " + std::to_string(head_dim) + " (supported: 64, 128, 256)");
  }
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  if (num_tokens > kMax / head_dim / num_kv_heads) {
    bad_argument(what, "num_kv_heads * num_tokens * head_dim overflows 64 bits");
  }
  if (!std::isfinite(scale)) bad_argument(what, "scale must be finite");
  require_non_null(what, q, "q");
  require_non_null(what, k, "k");
  require_non_null(what, v, "v");
  require_non_null(what, out, "out");
  require_non_null(what, lse, "lse");
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

}  // namespace kvsim::gpu::detail
