#include "policies/clipped_quantizer.h"

#include <algorithm>
#include <cmath>

#include "policies/quantizer.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"

namespace kvsim {

MetaFormat parse_meta_format(const std::string& name) {
  if (name == "fp16") return MetaFormat::kFp16;
  if (name == "fp8") return MetaFormat::kFp8;
  throw ConfigError("unknown metadata format '" + name + "' (valid: fp16, fp8)");
}

int meta_format_bits(MetaFormat format) { return format == MetaFormat::kFp16 ? 16 : 8; }

float round_to_e4m3(float x) { return round_to_fp8(x, Fp8Format::kE4M3); }

float round_meta(float x, MetaFormat format) {
  return format == MetaFormat::kFp16 ? round_to_half(x) : round_to_e4m3(x);
}

BitWidth BitWidth::parse(double bits, const std::string& what) {
  BitWidth w;
  w.bits = bits;
  if (bits == 1.5) {
    w.max_int = 2;
    w.packed_bits = 2;
    w.ideal_bits = std::log2(3.0);
    return w;
  }
  if (bits >= 1 && bits <= 8 && bits == std::floor(bits)) {
    const int b = static_cast<int>(bits);
    w.max_int = (1 << b) - 1;
    w.packed_bits = b;
    w.ideal_bits = b;
    return w;
  }
  throw ConfigError(what + "=" + std::to_string(bits) +
                    " is not a supported bit width (valid: 1.5 = ternary, or an integer 1..8)");
}

ClippedGroup clipped_quantize(const float* x, size_t n, int max_int, float clip, MetaFormat meta,
                              float* out, uint8_t* codes) {
  KVSIM_CHECK(n > 0 && max_int >= 1 && max_int <= 255);
  float lo = x[0], hi = x[0];
  for (size_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const float gmin = clip * lo, gmax = clip * hi;
  const float top = static_cast<float>(max_int);
  ClippedGroup g;
  g.scale = round_meta(std::max((gmax - gmin) / top, 1e-5f), meta);
  g.zp = round_meta(gmin, meta);
  for (size_t i = 0; i < n; ++i) {
    float code = 0.f;
    if (g.scale > 0.f) code = std::nearbyint(std::clamp((x[i] - g.zp) / g.scale, 0.f, top));
    if (codes) codes[i] = static_cast<uint8_t>(code);
    out[i] = code * g.scale + g.zp;
  }
  return g;
}

}  // namespace kvsim
