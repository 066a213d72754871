// CPU references of fp16 conversion, code packing, KIVI and SKVQ quantization (contracts in
// gpu/cpu_reference.h). Compiled with -ffp-contract=off (gpu/CMakeLists.txt): every float
// expression below is evaluated as written, like the explicitly rounded intrinsics of the CUDA
// kernels, so both sides produce the same bits.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/packing.h"
#include "gpu/validate.h"
#include "sim/base/fp16.h"

namespace kvsim::gpu::cpu_reference {
namespace {

using std::int64_t;
using std::size_t;

struct HalfParams {
  std::uint16_t scale;
  std::uint16_t minv;
};

// The group rule of quantize_groups over x[i * stride], i < count (count >= 1).
HalfParams rtn_params(const float* x, int64_t count, int64_t stride, float levels) {
  float mn = x[0];
  float mx = x[0];
  for (int64_t i = 1; i < count; ++i) {
    mn = std::min(mn, x[i * stride]);
    mx = std::max(mx, x[i * stride]);
  }
  mn = mn + 0.0f;  // -0 -> +0: the stored bits do not depend on the visiting order
  mx = mx + 0.0f;
  const float range = mx - mn;
  return {float_to_half_bits(range / levels), float_to_half_bits(mn)};
}

// The code of x under fp16 parameters (scale16 == 0 -> 0).
std::uint32_t rtn_code(float x, float mn16, float scale16, float levels) {
  if (scale16 == 0.0f) return 0;
  const float diff = x - mn16;
  const float t = std::clamp(diff / scale16, 0.0f, levels);
  return static_cast<std::uint32_t>(std::rint(t));  // ties to even, like rintf on the device
}

// code * scale16 + mn16 in float (the product is exact).
float dequant(std::uint32_t code, std::uint16_t scale_bits, std::uint16_t min_bits) {
  const float product = static_cast<float>(code) * half_bits_to_float(scale_bits);
  return product + half_bits_to_float(min_bits);
}

float levels_of(int bits) { return static_cast<float>((1 << bits) - 1); }

}  // namespace

void convert_float_to_half(const float* x, std::int64_t count, std::uint16_t* out) {
  detail::validate_convert_half("cpu_reference::convert_float_to_half", x, count, out);
  for (int64_t i = 0; i < count; ++i) out[i] = float_to_half_bits(x[i]);
}

void pack_codes(const std::uint8_t* codes, std::int64_t num_rows, std::int64_t row_len, int bits,
                std::uint32_t* words) {
  detail::validate_pack("cpu_reference::pack_codes", codes, words, num_rows, row_len, bits);
  const int cpw = codes_per_word(bits);
  const int64_t wpr = words_per_row(row_len, bits);
  const std::uint32_t mask = code_mask(bits);
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t w = 0; w < wpr; ++w) {
      std::uint32_t word = 0;
      for (int s = 0; s < cpw; ++s) {
        const int64_t i = w * cpw + s;
        if (i >= row_len) break;
        word |= (codes[r * row_len + i] & mask) << (s * bits);
      }
      words[r * wpr + w] = word;
    }
  }
}

void unpack_codes(const std::uint32_t* words, std::int64_t num_rows, std::int64_t row_len, int bits,
                  std::uint8_t* codes) {
  detail::validate_pack("cpu_reference::unpack_codes", codes, words, num_rows, row_len, bits);
  const int cpw = codes_per_word(bits);
  const int64_t wpr = words_per_row(row_len, bits);
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t i = 0; i < row_len; ++i) {
      const std::uint32_t word = words[r * wpr + i / cpw];
      codes[r * row_len + i] =
          static_cast<std::uint8_t>(extract_code(word, static_cast<int>(i % cpw), bits));
    }
  }
}

// --- KIVI ----------------------------------------------------------------------------------

void kivi_quantize_keys(const float* k, int num_heads, std::int64_t num_tokens, int head_dim,
                        int group_size, int bits, std::uint32_t* codes, std::uint16_t* scale,
                        std::uint16_t* minv) {
  detail::validate_kivi("cpu_reference::kivi_quantize_keys", k, codes, scale, minv, num_heads,
                        num_tokens, head_dim, group_size, bits);
  const int64_t n = num_tokens;
  const int64_t d = head_dim;
  const int64_t groups = num_groups_of(n, group_size);
  const int64_t blocks = words_per_row(n, bits);
  const int cpw = codes_per_word(bits);
  const float levels = levels_of(bits);

  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t t0 = g * group_size;
      const int64_t count = std::min<int64_t>(group_size, n - t0);
      for (int64_t c = 0; c < d; ++c) {
        const HalfParams p = rtn_params(k + (h * n + t0) * d + c, count, d, levels);
        scale[(h * groups + g) * d + c] = p.scale;
        minv[(h * groups + g) * d + c] = p.minv;
      }
    }
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t c = 0; c < d; ++c) {
        std::uint32_t word = 0;
        for (int s = 0; s < cpw; ++s) {
          const int64_t t = b * cpw + s;
          if (t >= n) break;
          const int64_t at = (h * groups + t / group_size) * d + c;
          const std::uint32_t code = rtn_code(k[(h * n + t) * d + c], half_bits_to_float(minv[at]),
                                              half_bits_to_float(scale[at]), levels);
          word |= code << (s * bits);
        }
        codes[(h * blocks + b) * d + c] = word;
      }
    }
  }
}

void kivi_dequantize_keys(const std::uint32_t* codes, const std::uint16_t* scale,
                          const std::uint16_t* minv, int num_heads, std::int64_t num_tokens,
                          int head_dim, int group_size, int bits, float* k_hat) {
  detail::validate_kivi("cpu_reference::kivi_dequantize_keys", k_hat, codes, scale, minv, num_heads,
                        num_tokens, head_dim, group_size, bits);
  const int64_t n = num_tokens;
  const int64_t d = head_dim;
  const int64_t groups = num_groups_of(n, group_size);
  const int64_t blocks = words_per_row(n, bits);
  const int cpw = codes_per_word(bits);
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t c = 0; c < d; ++c) {
        const std::uint32_t word = codes[(h * blocks + t / cpw) * d + c];
        const std::uint32_t code = extract_code(word, static_cast<int>(t % cpw), bits);
        const int64_t at = (h * groups + t / group_size) * d + c;
        k_hat[(h * n + t) * d + c] = dequant(code, scale[at], minv[at]);
      }
    }
  }
}

void kivi_quantize_values(const float* v, int num_heads, std::int64_t num_tokens, int head_dim,
                          int group_size, int bits, std::uint32_t* codes, std::uint16_t* scale,
                          std::uint16_t* minv) {
  detail::validate_kivi("cpu_reference::kivi_quantize_values", v, codes, scale, minv, num_heads,
                        num_tokens, head_dim, group_size, bits);
  const int64_t rows = static_cast<int64_t>(num_heads) * num_tokens;
  const int64_t d = head_dim;
  const int64_t groups = num_groups_of(d, group_size);
  const int64_t wpr = words_per_row(d, bits);
  const int cpw = codes_per_word(bits);
  const float levels = levels_of(bits);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = v + r * d;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * group_size;
      const HalfParams p = rtn_params(row + c0, std::min<int64_t>(group_size, d - c0), 1, levels);
      scale[r * groups + g] = p.scale;
      minv[r * groups + g] = p.minv;
    }
    for (int64_t w = 0; w < wpr; ++w) {
      std::uint32_t word = 0;
      for (int s = 0; s < cpw; ++s) {
        const int64_t c = w * cpw + s;
        if (c >= d) break;
        const int64_t at = r * groups + c / group_size;
        word |=
            rtn_code(row[c], half_bits_to_float(minv[at]), half_bits_to_float(scale[at]), levels)
            << (s * bits);
      }
      codes[r * wpr + w] = word;
    }
  }
}

void kivi_dequantize_values(const std::uint32_t* codes, const std::uint16_t* scale,
                            const std::uint16_t* minv, int num_heads, std::int64_t num_tokens,
                            int head_dim, int group_size, int bits, float* v_hat) {
  detail::validate_kivi("cpu_reference::kivi_dequantize_values", v_hat, codes, scale, minv,
                        num_heads, num_tokens, head_dim, group_size, bits);
  const int64_t rows = static_cast<int64_t>(num_heads) * num_tokens;
  const int64_t d = head_dim;
  const int64_t groups = num_groups_of(d, group_size);
  const int64_t wpr = words_per_row(d, bits);
  const int cpw = codes_per_word(bits);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < d; ++c) {
      const std::uint32_t code =
          extract_code(codes[r * wpr + c / cpw], static_cast<int>(c % cpw), bits);
      const int64_t at = r * groups + c / group_size;
      v_hat[r * d + c] = dequant(code, scale[at], minv[at]);
    }
  }
}

// --- SKVQ ----------------------------------------------------------------------------------

void skvq_quantize(const float* x, std::int64_t num_rows, int num_channels,
                   const std::int32_t* perm, const std::int32_t* group_starts, int num_groups,
                   int max_int, float clip, const float* group_clip, std::uint32_t* codes,
                   std::uint16_t* scale, std::uint16_t* zero) {
  constexpr const char* kWhat = "cpu_reference::skvq_quantize";
  detail::validate_skvq(kWhat, x, codes, scale, zero, perm, group_starts, num_rows, num_channels,
                        num_groups, max_int);
  if (group_clip == nullptr) detail::validate_clip(kWhat, clip, "clip");
  detail::validate_skvq_layout(kWhat, perm, group_starts, group_clip, num_channels, num_groups);

  const int64_t C = num_channels;
  const int bits = code_bits_for_max(max_int);
  const int cpw = codes_per_word(bits);
  const int64_t wpr = words_per_row(C, bits);
  const float top = static_cast<float>(max_int);
  std::vector<float> y(static_cast<size_t>(C));
  std::vector<float> mn16(static_cast<size_t>(C));     // per slot: its group's zero16
  std::vector<float> scale16(static_cast<size_t>(C));  // per slot: its group's scale16

  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t j = 0; j < C; ++j) y[j] = x[r * C + perm[j]];
    for (int g = 0; g < num_groups; ++g) {
      const int64_t begin = group_starts[g];
      const int64_t end = group_starts[g + 1];
      float lo = y[begin];
      float hi = y[begin];
      for (int64_t j = begin + 1; j < end; ++j) {
        lo = std::min(lo, y[j]);
        hi = std::max(hi, y[j]);
      }
      const float a = group_clip != nullptr ? group_clip[g] : clip;
      const float gmin = a * (lo + 0.0f) + 0.0f;  // -0 -> +0, as on the device
      const float gmax = a * (hi + 0.0f) + 0.0f;
      const float range = (gmax - gmin) / top;
      const std::uint16_t s_bits = float_to_half_bits(std::max(range, 1e-5f));
      const std::uint16_t z_bits = float_to_half_bits(gmin);
      scale[r * num_groups + g] = s_bits;
      zero[r * num_groups + g] = z_bits;
      for (int64_t j = begin; j < end; ++j) {
        scale16[j] = half_bits_to_float(s_bits);
        mn16[j] = half_bits_to_float(z_bits);
      }
    }
    for (int64_t w = 0; w < wpr; ++w) {
      std::uint32_t word = 0;
      for (int s = 0; s < cpw; ++s) {
        const int64_t j = w * cpw + s;
        if (j >= C) break;
        word |= rtn_code(y[j], mn16[j], scale16[j], top) << (s * bits);
      }
      codes[r * wpr + w] = word;
    }
  }
}

void skvq_dequantize(const std::uint32_t* codes, const std::uint16_t* scale,
                     const std::uint16_t* zero, std::int64_t num_rows, int num_channels,
                     const std::int32_t* perm, const std::int32_t* group_starts, int num_groups,
                     int max_int, float* x_hat) {
  constexpr const char* kWhat = "cpu_reference::skvq_dequantize";
  detail::validate_skvq(kWhat, x_hat, codes, scale, zero, perm, group_starts, num_rows,
                        num_channels, num_groups, max_int);
  detail::validate_skvq_layout(kWhat, perm, group_starts, nullptr, num_channels, num_groups);
  const int64_t C = num_channels;
  const int bits = code_bits_for_max(max_int);
  const int cpw = codes_per_word(bits);
  const int64_t wpr = words_per_row(C, bits);
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int g = 0; g < num_groups; ++g) {
      for (int64_t j = group_starts[g]; j < group_starts[g + 1]; ++j) {
        const std::uint32_t code =
            extract_code(codes[r * wpr + j / cpw], static_cast<int>(j % cpw), bits);
        x_hat[r * C + perm[j]] = dequant(code, scale[r * num_groups + g], zero[r * num_groups + g]);
      }
    }
  }
}

}  // namespace kvsim::gpu::cpu_reference
