// GPU launchers for the replay hot-path kernels. Each has the signature and the semantics of
// its namespace-mate in gpu/cpu_reference.h: both are declared, with the contracts, by the one
// list gpu/kernel_declarations.inc. Here every pointer is device memory (gpu/device_buffer.h).
// Launchers
//   - check their arguments exactly like the reference (kvsim::ConfigError on a bad size, null
//     or unsupported head_dim) and reject host pointers the device cannot access (ConfigError);
//   - throw kvsim::BackendUnavailable when the build has no CUDA or no GPU is visible;
//   - enqueue the work on the legacy default stream and return without waiting for it (the
//     next copy to the host, or device_synchronize(), waits); a launch failure throws
//     kvsim::gpu::CudaError.
// The fp16 arrays hold __half values; they are typed as their uint16_t bit patterns so that
// this header needs no CUDA headers.
//
// Launch shapes and how the results relate to the reference's:
//   quantize_groups, dequantize_groups: bit-identical to the reference (codes, scale, minv).
//   convert_float_to_half, pack_codes, unpack_codes, kivi_*, skvq_*: bit-identical to the
//     reference (every float operation is an explicitly rounded intrinsic evaluated in the
//     reference's order; fp16 conversions round to nearest even).
//     pack_codes: one thread per output word; unpack_codes: one thread per input word.
//     kivi_quantize_keys: one thread per (head, token group, channel) computes the fp16
//     scale/min, then one thread per output word quantizes and packs its tokens (reading the
//     stored fp16 values); kivi_dequantize_keys: one thread per word writes codes_per_word(bits)
//     tokens of one channel. kivi_quantize_values: one thread per (head, token, channel
//     group), then one thread per output word.
//     skvq_quantize/skvq_dequantize: one block per row (grid-stride): the permuted row is staged
//     in shared memory, one warp per group reduces min/max, one thread per word packs. perm,
//     group_starts and group_clip are device arrays; the launcher copies them to the host once
//     per call to check them like the reference does (a synchronizing copy of
//     num_channels + 2 * num_groups + 1 values).
//   fused_replay_attention: one pass over the packed cache and the exact K/V: grid
//     (num_kv_heads, splits); each block stages a tile of tokens (exact K/V converted to float,
//     K^/V^ dequantized on the fly) in shared memory once for all the query heads of its kv
//     head; warp (j, r) owns query head j of the group and every wph-th token of the tile
//     (wph = ceil(4 / heads per kv head)), with two online softmaxes (exact and compressed,
//     separate running maxima) and double-precision scalar sums for the KL and the retained
//     mass. A combine kernel (one block per query head) merges the per-warp partials and
//     computes the metrics. Scratch comes from the stream-ordered allocator. Errors against the
//     double-precision reference: docs/gpu.md and tests/gpu/fused_replay_test.cc.
//   key_norms_topk: a warp per key computes the norm (the reference's summation order, bit for
//     bit); then one block per head runs an 8-pass radix select on the 64-bit patterns of the
//     squared norms and compacts the selected positions in ascending order. Identical output
//     to the reference.
//   slerp_merge: a warp per row; double precision with explicitly rounded operations. The sums
//     are reduced in a different order than the reference's sequential loop and acos/sin are
//     CUDA's, so results can differ from the reference in the last bits of the doubles:
//     direction and norms (fp16) are equal unless the exact value lies within ~1e-15
//     (relative) of an fp16/float rounding boundary, distance agrees to ~1e-15 / sin(W).
//     slerp_restore is bit-identical.
#pragma once

#include <cstdint>

#include "gpu/packing.h"
#include "gpu/replay_types.h"

namespace kvsim::gpu {

#include "gpu/kernel_declarations.inc"  // IWYU pragma: export

}  // namespace kvsim::gpu
