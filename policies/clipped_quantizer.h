// SKVQ's clipped dynamic quantizer (methods.md, "Clipped dynamic quantization"),
// the bit widths it accepts (integers and 1.5 = ternary) and the fp8 (e4m3)
// rounding of its metadata. Used by `skvq` and its calibration.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvsim {

// Precision of the stored scale and zero point.
enum class MetaFormat { kFp16, kFp8 };
MetaFormat parse_meta_format(const std::string& name);  // "fp16" | "fp8"; throws ConfigError
int meta_format_bits(MetaFormat format);                // 16 or 8

// Rounds to the nearest float8 e4m3 ("e4m3fn": bias 7, no infinities, max 448)
// value, ties to even. Magnitudes above 448 saturate to +-448 (PyTorch's cast
// would give NaN from 480 on; a stored scale must never be NaN). Subnormals
// (steps of 2^-9) are kept; below 2^-10 a value rounds to 0.
float round_to_e4m3(float x);
float round_meta(float x, MetaFormat format);

// A bit width: an integer 1..8, or 1.5 = ternary (three levels, max_int 2).
struct BitWidth {
  double bits = 2;        // as given in the spec
  int max_int = 3;        // largest code: 2^bits - 1, or 2 for ternary
  int packed_bits = 2;    // bits a real packing spends per code: ceil(bits)
  double ideal_bits = 2;  // information content per code: log2(max_int + 1)
  bool ternary() const { return max_int == 2; }
  // Throws ConfigError naming `what` (e.g. "skvq: v_bits") for other values.
  static BitWidth parse(double bits, const std::string& what);
};

// Scale and zero point of one group, as stored (rounded to the meta format).
struct ClippedGroup {
  float scale = 0.f;
  float zp = 0.f;
};

// Quantizes x[0..n) (contiguous) with clip ratio `clip`:
//   gmin = clip * min x, gmax = clip * max x,
//   scale = meta(max((gmax - gmin) / max_int, 1e-5)), zp = meta(gmin),
//   q = nearbyint(clamp((x - zp) / scale, 0, max_int))   (ties to even),
//   x_hat = q * scale + zp.
// Values outside [gmin, gmax] saturate to code 0 or max_int. Codes are computed
// against the stored (rounded) scale and zero point, so that x_hat is exactly
// what a dequantizer reading the stored values produces. A scale that rounds
// to 0 (fp8, tiny range) gives code 0 everywhere, never NaN.
// Writes x_hat to out[0..n) (may alias x) and, if given, the codes.
ClippedGroup clipped_quantize(const float* x, size_t n, int max_int, float clip, MetaFormat meta,
                              float* out, uint8_t* codes = nullptr);

}  // namespace kvsim
