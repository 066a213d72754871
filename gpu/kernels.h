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

}  // namespace kvsim::gpu
