// IEEE 754 binary16 ("half") and bfloat16 <-> binary32 conversions for host code: the one
// implementation for the whole project (traces, quantizer metadata, the GPU layer's CPU
// references), exhaustively tested in tests/gpu/half_test.cc.
//
// Half values are carried on the host as their 16-bit patterns (std::uint16_t), bit-identical
// to CUDA's __half, so buffers can be copied between host and device unchanged. The
// conversions here are exact re-implementations of the IEEE rules (no CUDA headers needed):
//   - float -> half rounds to nearest, ties to even (the same as __float2half_rn), handles
//     subnormal halves, overflows to +-inf (|x| >= 65520), and keeps NaN a (quiet) NaN;
//   - half -> float is exact (every half is representable as a float).
// Host only: no .cu file includes it (the kernels use <cuda_fp16.h> intrinsics, which the
// CPU references in gpu/ match bit for bit).
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace kvsim {

// Bit patterns of a few half values, for readable tests and code.
inline constexpr std::uint16_t kHalfPosZero = 0x0000;
inline constexpr std::uint16_t kHalfNegZero = 0x8000;
inline constexpr std::uint16_t kHalfOne = 0x3C00;
inline constexpr std::uint16_t kHalfMax = 0x7BFF;           // 65504
inline constexpr std::uint16_t kHalfMinNormal = 0x0400;     // 2^-14
inline constexpr std::uint16_t kHalfMinSubnormal = 0x0001;  // 2^-24
inline constexpr std::uint16_t kHalfPosInf = 0x7C00;
inline constexpr std::uint16_t kHalfNegInf = 0xFC00;

// Converts a float to the nearest half (ties to even) and returns its bit pattern.
constexpr std::uint16_t float_to_half_bits(float value) {
  const std::uint32_t f = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((f >> 16) & 0x8000u);
  const std::uint32_t abs = f & 0x7FFFFFFFu;

  if (abs >= 0x7F800000u) {  // inf or NaN
    if (abs == 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7C00u);
    // NaN: keep the top payload bits and force the quiet bit so it stays a NaN.
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x03FFu));
  }
  // 65520 = 0x477FF000 is half-way between the largest half (65504) and 65536; the tie goes
  // to the even neighbour, which is the (infinite) one above.
  if (abs >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);

  if (abs >= 0x38800000u) {  // normal half: |x| >= 2^-14
    // Re-bias the exponent (127 -> 15) and drop 13 mantissa bits, rounding to nearest even.
    // A carry out of the mantissa correctly bumps the exponent.
    std::uint32_t h = (abs - 0x38000000u) >> 13;
    const std::uint32_t rest = abs & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }

  // Subnormal half (or zero). 2^-25 is half-way between 0 and the smallest subnormal 2^-24;
  // the tie goes to even, i.e. to zero.
  if (abs <= 0x33000000u) return sign;
  // |x| = m * 2^(e - 150) with a 24-bit significand m; in units of 2^-24 that is
  // m >> (126 - e), where the shift is in [14, 24] for this range.
  const std::uint32_t e = abs >> 23;
  const std::uint32_t m = (abs & 0x007FFFFFu) | 0x00800000u;
  const std::uint32_t shift = 126u - e;
  std::uint32_t h = m >> shift;
  const std::uint32_t rest = m & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (h & 1u))) ++h;  // may carry into 0x400: fine
  return static_cast<std::uint16_t>(sign | h);
}

// Converts a half bit pattern to the float with the same value (always exact).
constexpr float half_bits_to_float(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1Fu;
  std::uint32_t mant = bits & 0x03FFu;

  if (exp == 0x1Fu) {  // inf or NaN (payload kept)
    return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));
  }
  if (exp == 0) {
    if (mant == 0) return std::bit_cast<float>(sign);  // +-0
    // Subnormal: value = mant * 2^-24. Normalise so that bit 10 is the implicit one.
    std::int32_t e = -14;
    while ((mant & 0x0400u) == 0) {
      mant <<= 1;
      --e;
    }
    mant &= 0x03FFu;
    return std::bit_cast<float>(sign | (static_cast<std::uint32_t>(e + 127) << 23) | (mant << 13));
  }
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

// half_bits_to_float() over an array, bit for bit the same results (all 65536 patterns:
// tests/test_fp16.cc), written without branches so that -O3 vectorises the loop: a finite half
// h = (e, m) moved into a float's exponent and mantissa fields reads as 2^(e-127) 1.m (or the
// float subnormal m 2^-136 when e = 0), which the exact product by 2^112 rescales to the half's
// value; e = 31 (inf, NaN) takes the float's all-ones exponent with the payload kept.
inline void half_bits_to_float_array(const std::uint16_t* bits, float* out, std::size_t n) {
  constexpr float kRescale = 0x1p112f;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t h = bits[i];
    const std::uint32_t sign = (h & 0x8000u) << 16;
    const std::uint32_t magnitude = (h & 0x7FFFu) << 13;
    const float finite = std::bit_cast<float>(magnitude) * kRescale;
    const std::uint32_t special = 0x7F800000u | (magnitude & 0x007FE000u);
    const std::uint32_t abs_bits =
        (h & 0x7C00u) == 0x7C00u ? special : std::bit_cast<std::uint32_t>(finite);
    out[i] = std::bit_cast<float>(sign | abs_bits);
  }
}

// Rounds a float to the nearest half-representable value (as a float).
constexpr float round_to_half(float value) { return half_bits_to_float(float_to_half_bits(value)); }

// Converts a double to the nearest half (ties to even), rounding once: the double is
// first rounded to a float *to odd* (an inexact result takes the neighbour with an odd
// last bit), which keeps the information a second rounding needs, then to half. A plain
// double -> float -> half rounds twice: 4.638671865 became 4.640625 instead of 4.63671875.
inline std::uint16_t double_to_half_bits(double value) {
  float f = static_cast<float>(value);
  if (static_cast<double>(f) != value && (std::bit_cast<std::uint32_t>(f) & 1u) == 0 &&
      value == value) {
    f = std::nextafter(f, value > static_cast<double>(f) ? HUGE_VALF : -HUGE_VALF);
  }
  return float_to_half_bits(f);
}

// Rounds a double to the nearest half-representable value (as a float), once.
inline float round_double_to_half(double value) {
  return half_bits_to_float(double_to_half_bits(value));
}

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

inline void bf16_bits_to_float_array(const std::uint16_t* bits, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = bf16_bits_to_float(bits[i]);
}

}  // namespace kvsim
