// IEEE binary16 and bfloat16 conversions, so that the stored precision of
// traces and of quantizer metadata is exact and portable.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

#include "gpu/half.h"

namespace kvsim {

// binary16: one implementation for the whole project, exhaustively tested in
// tests/gpu/half_test.cc (bit-identical to CUDA's __float2half_rn).
using gpu::float_to_half_bits;
using gpu::half_bits_to_float;
using gpu::round_to_half;

// float -> bfloat16 bits, round to nearest even.
inline uint16_t float_to_bf16_bits(float value) {
  uint32_t f = std::bit_cast<uint32_t>(value);
  if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7fffu + ((f >> 16) & 1u);
  return static_cast<uint16_t>((f + rounding) >> 16);
}

inline float bf16_bits_to_float(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

}  // namespace kvsim
