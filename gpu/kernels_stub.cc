// Build without CUDA: the launchers of kernels.h exist so that callers link, check their
// arguments like the CUDA build, and then throw kvsim::BackendUnavailable.
#include <cstdint>

#include "gpu/device.h"
#include "gpu/kernels.h"
#include "gpu/validate.h"

namespace kvsim::gpu {

void replay_attention(const float* q, const float* k, const float* v, int num_q_heads,
                      int num_kv_heads, std::int64_t num_tokens, int head_dim, float scale,
                      float* out, float* lse) {
  detail::validate_attention("gpu::replay_attention", q, k, v, out, lse, num_q_heads, num_kv_heads,
                             num_tokens, head_dim, scale);
  require_cuda();
}

void quantize_groups(const float* x, std::int64_t num_groups, int group_size, int bits,
                     std::uint8_t* codes, std::uint16_t* scale, std::uint16_t* minv) {
  detail::validate_quantize("gpu::quantize_groups", x, codes, scale, minv, num_groups, group_size,
                            bits);
  require_cuda();
}

void dequantize_groups(const std::uint8_t* codes, const std::uint16_t* scale,
                       const std::uint16_t* minv, std::int64_t num_groups, int group_size,
                       float* x_hat) {
  detail::validate_dequantize("gpu::dequantize_groups", codes, scale, minv, num_groups, group_size,
                              x_hat);
  require_cuda();
}

}  // namespace kvsim::gpu
