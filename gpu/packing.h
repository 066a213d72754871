// Bit-packed quantization codes: the word layout shared by the CPU references, the CUDA kernels
// and their tests. Usable from host and device code (no CUDA headers needed on the host).
//
// Layout (KIVI's `pack_tensor` order): a row of `len` codes of `bits` bits (1..8) is stored in
// words_per_row(len, bits) little-endian uint32 words holding codes_per_word(bits) = 32 / bits
// codes each (integer division: 32, 16, 10, 8, 6, 5, 4, 4 for 1..8 bits). Code i of the row is
//     word i / cpw, bits [bits * (i % cpw), bits * (i % cpw) + bits)
// i.e. the first code sits in the least significant bits. For 3, 5, 6 and 7 bits the top
// 32 - cpw * bits bits of every word are unused; they, and the slots past the end of the row in
// its last word, are zero. Rows never share a word.
//
// Which dimension is the packed "row" depends on the tensor (see kernels.h):
//   - per-token codes (KIVI values, SKVQ): a row is one token's channels;
//   - per-channel key codes (KIVI keys): a row is one channel's tokens, as KIVI packs its
//     transposed keys; the words are then stored token-block major ([heads, blocks, head_dim])
//     so that a warp reading one block of tokens reads consecutive words.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KVSIM_HOST_DEVICE __host__ __device__
#else
#define KVSIM_HOST_DEVICE
#endif

namespace kvsim::gpu {

// Codes per 32-bit word for bits in 1..8.
KVSIM_HOST_DEVICE constexpr int codes_per_word(int bits) { return 32 / bits; }

// Words needed for a row of `len` codes.
KVSIM_HOST_DEVICE constexpr std::int64_t words_per_row(std::int64_t len, int bits) {
  return (len + codes_per_word(bits) - 1) / codes_per_word(bits);
}

// Mask of the low `bits` bits.
KVSIM_HOST_DEVICE constexpr std::uint32_t code_mask(int bits) {
  return (bits >= 32) ? 0xFFFFFFFFu : ((1u << bits) - 1u);
}

// Extracts code `slot` (0 <= slot < codes_per_word(bits)) from a word.
KVSIM_HOST_DEVICE constexpr std::uint32_t extract_code(std::uint32_t word, int slot, int bits) {
  return (word >> (slot * bits)) & code_mask(bits);
}

// Number of groups of `group` covering `len` elements (the last one may be partial).
KVSIM_HOST_DEVICE constexpr std::int64_t num_groups_of(std::int64_t len, std::int64_t group) {
  return (len + group - 1) / group;
}

// Bits a packed SKVQ code needs for codes 0..max_int: 2 for ternary (max_int 2), b for
// max_int = 2^b - 1.
KVSIM_HOST_DEVICE constexpr int code_bits_for_max(int max_int) {
  int b = 0;
  while ((1 << b) <= max_int) ++b;
  return b;
}

}  // namespace kvsim::gpu
