// Build without CUDA: the launchers of kernels.h exist so that callers link, check their
// arguments like the CUDA build, and then throw kvsim::BackendUnavailable.
#include <cstdint>

#include "gpu/device.h"
#include "gpu/kernels.h"
#include "gpu/validate.h"

namespace kvsim::gpu {

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

void convert_float_to_half(const float* x, std::int64_t count, std::uint16_t* out) {
  detail::validate_convert_half("gpu::convert_float_to_half", x, count, out);
  require_cuda();
}

void pack_codes(const std::uint8_t* codes, std::int64_t num_rows, std::int64_t row_len, int bits,
                std::uint32_t* words) {
  detail::validate_pack("gpu::pack_codes", codes, words, num_rows, row_len, bits);
  require_cuda();
}

void unpack_codes(const std::uint32_t* words, std::int64_t num_rows, std::int64_t row_len, int bits,
                  std::uint8_t* codes) {
  detail::validate_pack("gpu::unpack_codes", codes, words, num_rows, row_len, bits);
  require_cuda();
}

void kivi_quantize_keys(const float* k, int num_heads, std::int64_t num_tokens, int head_dim,
                        int group_size, int bits, std::uint32_t* codes, std::uint16_t* scale,
                        std::uint16_t* minv) {
  detail::validate_kivi("gpu::kivi_quantize_keys", k, codes, scale, minv, num_heads, num_tokens,
                        head_dim, group_size, bits);
  require_cuda();
}

void kivi_dequantize_keys(const std::uint32_t* codes, const std::uint16_t* scale,
                          const std::uint16_t* minv, int num_heads, std::int64_t num_tokens,
                          int head_dim, int group_size, int bits, float* k_hat) {
  detail::validate_kivi("gpu::kivi_dequantize_keys", k_hat, codes, scale, minv, num_heads,
                        num_tokens, head_dim, group_size, bits);
  require_cuda();
}

void kivi_quantize_values(const float* v, int num_heads, std::int64_t num_tokens, int head_dim,
                          int group_size, int bits, std::uint32_t* codes, std::uint16_t* scale,
                          std::uint16_t* minv) {
  detail::validate_kivi("gpu::kivi_quantize_values", v, codes, scale, minv, num_heads, num_tokens,
                        head_dim, group_size, bits);
  require_cuda();
}

void kivi_dequantize_values(const std::uint32_t* codes, const std::uint16_t* scale,
                            const std::uint16_t* minv, int num_heads, std::int64_t num_tokens,
                            int head_dim, int group_size, int bits, float* v_hat) {
  detail::validate_kivi("gpu::kivi_dequantize_values", v_hat, codes, scale, minv, num_heads,
                        num_tokens, head_dim, group_size, bits);
  require_cuda();
}

// The layout arrays live in device memory: their contents are checked by the CUDA build only.
void skvq_quantize(const float* x, std::int64_t num_rows, int num_channels,
                   const std::int32_t* perm, const std::int32_t* group_starts, int num_groups,
                   int max_int, float clip, const float* group_clip, std::uint32_t* codes,
                   std::uint16_t* scale, std::uint16_t* zero) {
  detail::validate_skvq("gpu::skvq_quantize", x, codes, scale, zero, perm, group_starts, num_rows,
                        num_channels, num_groups, max_int);
  if (group_clip == nullptr) detail::validate_clip("gpu::skvq_quantize", clip, "clip");
  require_cuda();
}

void skvq_dequantize(const std::uint32_t* codes, const std::uint16_t* scale,
                     const std::uint16_t* zero, std::int64_t num_rows, int num_channels,
                     const std::int32_t* perm, const std::int32_t* group_starts, int num_groups,
                     int max_int, float* x_hat) {
  detail::validate_skvq("gpu::skvq_dequantize", x_hat, codes, scale, zero, perm, group_starts,
                        num_rows, num_channels, num_groups, max_int);
  require_cuda();
}

void fused_replay_attention(const FusedReplayArgs& args) {
  detail::validate_fused_replay("gpu::fused_replay_attention", args);
  require_cuda();
}

void key_norms_topk(const float* k, int num_heads, std::int64_t num_tokens, int head_dim,
                    std::int64_t keep, TiePreference, float* norms, std::int32_t* kept) {
  detail::validate_norms_topk("gpu::key_norms_topk", k, num_heads, num_tokens, head_dim, keep,
                              norms, kept);
  require_cuda();
}

void slerp_merge(const float* xa, const float* xb, std::int64_t num_rows, int dim, double t,
                 std::uint16_t* direction, std::uint16_t* norm_a, std::uint16_t* norm_b,
                 double* distance, std::uint8_t* merged) {
  detail::validate_slerp_merge("gpu::slerp_merge", xa, xb, num_rows, dim, t, direction, norm_a,
                               norm_b, distance, merged);
  require_cuda();
}

void slerp_restore(const std::uint16_t* direction, const std::uint16_t* norm, std::int64_t num_rows,
                   int dim, float* x_hat) {
  detail::validate_slerp_restore("gpu::slerp_restore", direction, norm, num_rows, dim, x_hat);
  require_cuda();
}

}  // namespace kvsim::gpu
