// Bit packing, KIVI and SKVQ quantization: the CPU references against hand-worked examples and
// naive re-evaluations of the formulas (always run), and the GPU launchers against the CPU
// references on random inputs (skipped without a CUDA device).
//
// Tolerance: none. Both sides evaluate the same IEEE float operations in the same order (exact
// min/max, explicitly rounded intrinsics on the device, -ffp-contract=off on the host, round to
// nearest even for fp16 and for codes), so words, fp16 parameters and dequantized floats must
// be bit-identical; dequantized floats are also checked to be finite (NaN never passes).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/kernels.h"
#include "gpu/packing.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"
#include "tests/gpu/test_util.h"

namespace kvsim::gpu {
namespace {

using testing::random_uniform;

std::vector<std::uint8_t> random_codes(std::size_t count, int max_code, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(0, max_code);
  std::vector<std::uint8_t> codes(count);
  for (auto& c : codes) c = static_cast<std::uint8_t>(dist(rng));
  return codes;
}

bool is_half_nan(std::uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x03FFu) != 0; }

// Random values with a per-channel offset and spread (KIVI's key outlier channels). Rows
// 32..39 of every 40 repeat the offsets (constant per-channel key groups of up to 8 aligned
// tokens) and every 13th row is one constant (constant per-token groups), so that the
// scale16 == 0 path is exercised on both axes.
std::vector<float> channel_structured(std::int64_t rows, int dim, std::uint32_t seed) {
  std::vector<float> x = random_uniform(static_cast<std::size_t>(rows * dim), seed, -1.0f, 1.0f);
  const std::vector<float> offset =
      random_uniform(static_cast<std::size_t>(dim), seed + 1, -4.0f, 4.0f);
  const std::vector<float> spread =
      random_uniform(static_cast<std::size_t>(dim), seed + 2, 0.1f, 3.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < dim; ++c) {
      float& v = x[static_cast<std::size_t>(r * dim + c)];
      if ((r / 8) % 5 == 4) {
        v = offset[c];
      } else if (r % 13 == 12) {
        v = offset[0];
      } else {
        v = offset[c] + spread[c] * v;
      }
    }
  }
  return x;
}

// --- packing: CPU reference -------------------------------------------------------------------

TEST(CpuPack, HandWorkedTwoAndThreeBits) {
  // 2 bits, 16 codes per word, the first code in the lowest bits:
  // 1 | 2<<2 | 3<<4 | 0<<6 | 3<<8 | 3<<10 = 0xF39.
  const std::vector<std::uint8_t> two = {1, 2, 3, 0, 3, 3};
  std::vector<std::uint32_t> w2(1);
  cpu_reference::pack_codes(two.data(), 1, 6, 2, w2.data());
  EXPECT_EQ(w2[0], 0xF39u);
  // 3 bits, 10 codes per word (bits 30, 31 unused), 12 codes -> 2 words:
  // word 0 = sum code_i << 3i over the first ten = 0x111F58D1, word 1 = 3 | 4<<3 = 35.
  const std::vector<std::uint8_t> three = {1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4};
  std::vector<std::uint32_t> w3(2);
  cpu_reference::pack_codes(three.data(), 1, 12, 3, w3.data());
  EXPECT_EQ(w3, (std::vector<std::uint32_t>{0x111F58D1u, 35u}));
  std::vector<std::uint8_t> back(12);
  cpu_reference::unpack_codes(w3.data(), 1, 12, 3, back.data());
  EXPECT_EQ(back, three);
}

TEST(CpuPack, LayoutConstants) {
  const int expected_cpw[] = {32, 16, 10, 8, 6, 5, 4, 4};
  for (int bits = 1; bits <= 8; ++bits) EXPECT_EQ(codes_per_word(bits), expected_cpw[bits - 1]);
  EXPECT_EQ(words_per_row(0, 2), 0);
  EXPECT_EQ(words_per_row(16, 2), 1);
  EXPECT_EQ(words_per_row(17, 2), 2);
  EXPECT_EQ(words_per_row(10, 3), 1);
  EXPECT_EQ(words_per_row(11, 3), 2);
  EXPECT_EQ(code_bits_for_max(1), 1);
  EXPECT_EQ(code_bits_for_max(2), 2);  // ternary
  EXPECT_EQ(code_bits_for_max(3), 2);
  EXPECT_EQ(code_bits_for_max(15), 4);
  EXPECT_EQ(code_bits_for_max(255), 8);
}

// Round trip for every width and odd row lengths; unused bits are zero; high code bits masked.
TEST(CpuPack, RoundTripsEveryWidthAndZeroesUnusedBits) {
  for (int bits = 1; bits <= 8; ++bits) {
    for (std::int64_t len : {1, 7, 33, 100}) {
      const std::int64_t rows = 3;
      const int cpw = codes_per_word(bits);
      const std::int64_t wpr = words_per_row(len, bits);
      // Codes with stray high bits: only the low `bits` bits may be stored.
      std::vector<std::uint8_t> codes = random_codes(static_cast<std::size_t>(rows * len), 255,
                                                     static_cast<std::uint32_t>(bits * 100 + len));
      std::vector<std::uint32_t> words(static_cast<std::size_t>(rows * wpr));
      cpu_reference::pack_codes(codes.data(), rows, len, bits, words.data());
      std::vector<std::uint8_t> back(codes.size());
      cpu_reference::unpack_codes(words.data(), rows, len, bits, back.data());
      for (std::size_t i = 0; i < codes.size(); ++i) {
        ASSERT_EQ(back[i], codes[i] & code_mask(bits)) << "bits " << bits << " len " << len;
      }
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t w = 0; w < wpr; ++w) {
          const std::int64_t used = std::min<std::int64_t>(cpw, len - w * cpw);
          const std::uint32_t word = words[static_cast<std::size_t>(r * wpr + w)];
          const int used_bits = static_cast<int>(used) * bits;
          if (used_bits < 32) {
            EXPECT_EQ(word >> used_bits, 0u) << "bits " << bits << " len " << len;
          }
        }
      }
    }
  }
}

TEST(CpuPack, RejectsBadArguments) {
  std::vector<std::uint8_t> codes(8);
  std::vector<std::uint32_t> words(8);
  EXPECT_THROW(cpu_reference::pack_codes(codes.data(), 1, 8, 0, words.data()), ConfigError);
  EXPECT_THROW(cpu_reference::pack_codes(codes.data(), 1, 8, 9, words.data()), ConfigError);
  EXPECT_THROW(cpu_reference::pack_codes(codes.data(), -1, 8, 2, words.data()), ConfigError);
  EXPECT_THROW(cpu_reference::pack_codes(nullptr, 1, 8, 2, words.data()), ConfigError);
  EXPECT_THROW(cpu_reference::unpack_codes(words.data(), 1, -8, 2, codes.data()), ConfigError);
  EXPECT_NO_THROW(cpu_reference::pack_codes(nullptr, 0, 8, 2, nullptr));
}

// --- KIVI: CPU reference ------------------------------------------------------------------------

struct Kivi {
  std::vector<std::uint32_t> codes;
  std::vector<std::uint16_t> scale, minv;
};

Kivi kivi_keys(const std::vector<float>& k, int heads, std::int64_t n, int d, int group, int bits) {
  Kivi q;
  q.codes.resize(static_cast<std::size_t>(heads * words_per_row(n, bits) * d));
  q.scale.resize(static_cast<std::size_t>(heads * num_groups_of(n, group) * d));
  q.minv.resize(q.scale.size());
  cpu_reference::kivi_quantize_keys(k.data(), heads, n, d, group, bits, q.codes.data(),
                                    q.scale.data(), q.minv.data());
  return q;
}

Kivi kivi_values(const std::vector<float>& v, int heads, std::int64_t n, int d, int group,
                 int bits) {
  Kivi q;
  q.codes.resize(static_cast<std::size_t>(heads * n * words_per_row(d, bits)));
  q.scale.resize(static_cast<std::size_t>(heads * n * num_groups_of(d, group)));
  q.minv.resize(q.scale.size());
  cpu_reference::kivi_quantize_values(v.data(), heads, n, d, group, bits, q.codes.data(),
                                      q.scale.data(), q.minv.data());
  return q;
}

// Hand-worked: one channel, two tokens [0, 3] at 2 bits: min 0, scale 3/3 = 1 (0x3C00), codes
// 0 and 3 -> word 0 | 3 << 2 = 12. Values: one token [0, 1.5, 3] -> codes 0, 2 (1.5 is a tie,
// to even), 3 -> word 0 | 2<<2 | 3<<4 = 56.
TEST(CpuKivi, HandWorked) {
  const Kivi keys = kivi_keys({0.0f, 3.0f}, 1, 2, 1, 2, 2);
  EXPECT_EQ(keys.codes, std::vector<std::uint32_t>{12u});
  EXPECT_EQ(keys.scale, std::vector<std::uint16_t>{0x3C00});
  EXPECT_EQ(keys.minv, std::vector<std::uint16_t>{0x0000});
  const Kivi values = kivi_values({0.0f, 1.5f, 3.0f}, 1, 1, 3, 3, 2);
  EXPECT_EQ(values.codes, std::vector<std::uint32_t>{56u});
  std::vector<float> v_hat(3);
  cpu_reference::kivi_dequantize_values(values.codes.data(), values.scale.data(),
                                        values.minv.data(), 1, 1, 3, 3, 2, v_hat.data());
  EXPECT_EQ(v_hat, (std::vector<float>{0.0f, 2.0f, 3.0f}));
}

// Naive: gather each key group (one channel over G tokens, the last group partial) into a
// contiguous array and quantize it with quantize_groups; the KIVI layout must hold exactly the
// same parameters and codes, and dequantize to quantize_groups' x_hat.
TEST(CpuKivi, KeysEqualQuantizeGroupsOnGatheredChannels) {
  const int heads = 2, d = 8, group = 8;
  const std::int64_t n = 37;  // 4 full groups and one of 5 tokens
  for (int bits : {1, 2, 3, 4, 8}) {
    const std::vector<float> k = channel_structured(heads * n, d, 40 + bits);
    const Kivi q = kivi_keys(k, heads, n, d, group, bits);
    std::vector<float> k_hat(k.size());
    cpu_reference::kivi_dequantize_keys(q.codes.data(), q.scale.data(), q.minv.data(), heads, n, d,
                                        group, bits, k_hat.data());
    const std::int64_t groups = num_groups_of(n, group);
    const std::int64_t blocks = words_per_row(n, bits);
    const int cpw = codes_per_word(bits);
    for (int h = 0; h < heads; ++h) {
      for (std::int64_t g = 0; g < groups; ++g) {
        const std::int64_t t0 = g * group;
        const std::int64_t count = std::min<std::int64_t>(group, n - t0);
        for (int c = 0; c < d; ++c) {
          std::vector<float> col(static_cast<std::size_t>(count));
          for (std::int64_t i = 0; i < count; ++i) col[i] = k[((h * n) + t0 + i) * d + c];
          std::vector<std::uint8_t> codes(col.size());
          std::uint16_t s = 0, m = 0;
          cpu_reference::quantize_groups(col.data(), 1, static_cast<int>(count), bits, codes.data(),
                                         &s, &m);
          std::vector<float> col_hat(col.size());
          cpu_reference::dequantize_groups(codes.data(), &s, &m, 1, static_cast<int>(count),
                                           col_hat.data());
          const std::size_t at = static_cast<std::size_t>((h * groups + g) * d + c);
          ASSERT_EQ(q.scale[at], s) << "bits " << bits << " h " << h << " g " << g << " c " << c;
          ASSERT_EQ(q.minv[at], m);
          for (std::int64_t i = 0; i < count; ++i) {
            const std::int64_t t = t0 + i;
            const std::uint32_t word =
                q.codes[static_cast<std::size_t>((h * blocks + t / cpw) * d + c)];
            ASSERT_EQ(extract_code(word, static_cast<int>(t % cpw), bits), codes[i]);
            const float x_hat = k_hat[static_cast<std::size_t>((h * n + t) * d + c)];
            ASSERT_TRUE(std::isfinite(x_hat));
            ASSERT_EQ(x_hat, col_hat[i]);
          }
        }
      }
    }
  }
}

// Values: each token's channel groups (the last one partial) are quantize_groups' groups.
TEST(CpuKivi, ValuesEqualQuantizeGroupsPerToken) {
  const int heads = 3, d = 20, group = 8;  // groups of 8, 8 and 4 channels
  const std::int64_t n = 13;
  for (int bits : {2, 4, 5, 7}) {
    const std::vector<float> v = channel_structured(heads * n, d, 70 + bits);
    const Kivi q = kivi_values(v, heads, n, d, group, bits);
    std::vector<float> v_hat(v.size());
    cpu_reference::kivi_dequantize_values(q.codes.data(), q.scale.data(), q.minv.data(), heads, n,
                                          d, group, bits, v_hat.data());
    const std::int64_t groups = num_groups_of(d, group);
    const std::int64_t wpr = words_per_row(d, bits);
    const int cpw = codes_per_word(bits);
    for (std::int64_t r = 0; r < heads * n; ++r) {
      for (std::int64_t g = 0; g < groups; ++g) {
        const int c0 = static_cast<int>(g * group);
        const int count = std::min(group, d - c0);
        std::vector<std::uint8_t> codes(static_cast<std::size_t>(count));
        std::uint16_t s = 0, m = 0;
        cpu_reference::quantize_groups(v.data() + r * d + c0, 1, count, bits, codes.data(), &s, &m);
        ASSERT_EQ(q.scale[static_cast<std::size_t>(r * groups + g)], s);
        ASSERT_EQ(q.minv[static_cast<std::size_t>(r * groups + g)], m);
        for (int i = 0; i < count; ++i) {
          const int c = c0 + i;
          const std::uint32_t word = q.codes[static_cast<std::size_t>(r * wpr + c / cpw)];
          ASSERT_EQ(extract_code(word, c % cpw, bits), codes[i]) << "bits " << bits;
          const float expect =
              static_cast<float>(codes[i]) * half_bits_to_float(s) + half_bits_to_float(m);
          ASSERT_EQ(v_hat[static_cast<std::size_t>(r * d + c)], expect);
        }
      }
    }
  }
}

TEST(CpuKivi, RejectsBadArguments) {
  std::vector<float> x(64, 1.0f);
  std::vector<std::uint32_t> codes(64);
  std::vector<std::uint16_t> s(64), m(64);
  auto keys = [&](int heads, std::int64_t n, int d, int g, int bits) {
    cpu_reference::kivi_quantize_keys(x.data(), heads, n, d, g, bits, codes.data(), s.data(),
                                      m.data());
  };
  EXPECT_NO_THROW(keys(1, 4, 4, 2, 2));
  EXPECT_THROW(keys(0, 4, 4, 2, 2), ConfigError);
  EXPECT_THROW(keys(1, -1, 4, 2, 2), ConfigError);
  EXPECT_THROW(keys(1, 4, 0, 2, 2), ConfigError);
  EXPECT_THROW(keys(1, 4, 4, 0, 2), ConfigError);
  EXPECT_THROW(keys(1, 4, 4, 2, 9), ConfigError);
  EXPECT_THROW(cpu_reference::kivi_dequantize_values(codes.data(), s.data(), m.data(), 1, 4, 4, 2,
                                                     2, nullptr),
               ConfigError);
  EXPECT_NO_THROW(
      cpu_reference::kivi_quantize_values(nullptr, 1, 0, 4, 2, 2, nullptr, nullptr, nullptr));
}

// --- SKVQ: CPU reference ------------------------------------------------------------------------

struct SkvqLayout {
  std::vector<std::int32_t> perm;
  std::vector<std::int32_t> starts;
  int groups() const { return static_cast<int>(starts.size()) - 1; }
};

struct Skvq {
  std::vector<std::uint32_t> codes;
  std::vector<std::uint16_t> scale, zero;
};

Skvq skvq(const std::vector<float>& x, std::int64_t rows, int C, const SkvqLayout& L, int max_int,
          float clip, const float* group_clip) {
  Skvq q;
  q.codes.resize(static_cast<std::size_t>(rows * words_per_row(C, code_bits_for_max(max_int))));
  q.scale.resize(static_cast<std::size_t>(rows * L.groups()));
  q.zero.resize(q.scale.size());
  cpu_reference::skvq_quantize(x.data(), rows, C, L.perm.data(), L.starts.data(), L.groups(),
                               max_int, clip, group_clip, q.codes.data(), q.scale.data(),
                               q.zero.data());
  return q;
}

// Hand-worked ternary with clip 0.5: x = [-1, 0, 0.5, 1] -> gmin -0.5, gmax 0.5,
// scale (0.5 + 0.5) / 2 = 0.5 (0x3800), zero -0.5 (0xB800); (x + 0.5) / 0.5 = -1, 1, 2, 3 ->
// codes 0, 1, 2, 2 (clamped) -> 2-bit word 0 | 1<<2 | 2<<4 | 2<<6 = 164; x_hat -0.5, 0, .5, .5.
TEST(CpuSkvq, HandWorkedTernaryClipped) {
  const SkvqLayout L{{0, 1, 2, 3}, {0, 4}};
  const std::vector<float> x = {-1.0f, 0.0f, 0.5f, 1.0f};
  const Skvq q = skvq(x, 1, 4, L, 2, 0.5f, nullptr);
  EXPECT_EQ(q.codes, std::vector<std::uint32_t>{164u});
  EXPECT_EQ(q.scale, std::vector<std::uint16_t>{0x3800});
  EXPECT_EQ(q.zero, std::vector<std::uint16_t>{0xB800});
  std::vector<float> x_hat(4);
  cpu_reference::skvq_dequantize(q.codes.data(), q.scale.data(), q.zero.data(), 1, 4, L.perm.data(),
                                 L.starts.data(), 1, 2, x_hat.data());
  EXPECT_EQ(x_hat, (std::vector<float>{-0.5f, 0.0f, 0.5f, 0.5f}));
}

// A constant group has range 0: the scale is the 1e-5 floor (fp16 0x00A8), no NaN.
TEST(CpuSkvq, ConstantGroupUsesTheScaleFloor) {
  const SkvqLayout L{{0, 1, 2}, {0, 3}};
  const std::vector<float> x = {0.25f, 0.25f, 0.25f};
  const Skvq q = skvq(x, 1, 3, L, 3, 0.92f, nullptr);
  EXPECT_EQ(q.scale[0], float_to_half_bits(1e-5f));
  EXPECT_EQ(q.zero[0], float_to_half_bits(0.92f * 0.25f));
  std::vector<float> x_hat(3);
  cpu_reference::skvq_dequantize(q.codes.data(), q.scale.data(), q.zero.data(), 1, 3, L.perm.data(),
                                 L.starts.data(), 1, 3, x_hat.data());
  for (float v : x_hat) {
    EXPECT_TRUE(std::isfinite(v));
    EXPECT_NEAR(v, 0.25f, 0.021f);  // clipped to a * x = 0.23 plus 3 steps of 1e-5
  }
}

// Naive: the formula evaluated directly per (row, group) on the permuted channels, with a
// per-group clip, against the reference's codes, parameters and x_hat (in original order).
TEST(CpuSkvq, MatchesNaiveFormulaWithPermutationAndGroupClips) {
  const int C = 12;
  const std::int64_t rows = 9;
  const SkvqLayout L{{5, 0, 3, 11, 1, 4, 2, 10, 6, 9, 8, 7}, {0, 2, 7, 12}};
  const std::vector<float> clips = {1.0f, 0.8f, 0.92f};
  for (int max_int : {2, 3, 7, 255}) {
    const std::vector<float> x = channel_structured(rows, C, 300 + max_int);
    const Skvq q = skvq(x, rows, C, L, max_int, 0.5f, clips.data());
    std::vector<float> x_hat(x.size());
    cpu_reference::skvq_dequantize(q.codes.data(), q.scale.data(), q.zero.data(), rows, C,
                                   L.perm.data(), L.starts.data(), L.groups(), max_int,
                                   x_hat.data());
    const int bits = code_bits_for_max(max_int);
    const std::int64_t wpr = words_per_row(C, bits);
    const auto top = static_cast<float>(max_int);
    for (std::int64_t r = 0; r < rows; ++r) {
      for (int g = 0; g < L.groups(); ++g) {
        float lo = INFINITY, hi = -INFINITY;
        for (int j = L.starts[g]; j < L.starts[g + 1]; ++j) {
          lo = std::min(lo, x[r * C + L.perm[j]]);
          hi = std::max(hi, x[r * C + L.perm[j]]);
        }
        const float gmin = clips[g] * lo;
        const float gmax = clips[g] * hi;
        const float scale16 = round_to_half(std::max((gmax - gmin) / top, 1e-5f));
        const float zero16 = round_to_half(gmin);
        ASSERT_EQ(half_bits_to_float(q.scale[r * L.groups() + g]), scale16);
        ASSERT_EQ(half_bits_to_float(q.zero[r * L.groups() + g]), zero16);
        for (int j = L.starts[g]; j < L.starts[g + 1]; ++j) {
          const float y = x[r * C + L.perm[j]];
          const float code = std::nearbyint(std::clamp((y - zero16) / scale16, 0.0f, top));
          const std::uint32_t word = q.codes[r * wpr + j / codes_per_word(bits)];
          ASSERT_EQ(extract_code(word, j % codes_per_word(bits), bits),
                    static_cast<std::uint32_t>(code))
              << "max_int " << max_int << " row " << r << " slot " << j;
          ASSERT_EQ(x_hat[r * C + L.perm[j]], code * scale16 + zero16);
        }
      }
    }
  }
}

TEST(CpuSkvq, RejectsBadLayoutsAndArguments) {
  std::vector<float> x(8, 1.0f);
  std::vector<std::uint32_t> codes(8);
  std::vector<std::uint16_t> s(8), z(8);
  auto call = [&](std::vector<std::int32_t> perm, std::vector<std::int32_t> starts, int max_int,
                  float clip, int C = 4) {
    cpu_reference::skvq_quantize(x.data(), 1, C, perm.data(), starts.data(),
                                 static_cast<int>(starts.size()) - 1, max_int, clip, nullptr,
                                 codes.data(), s.data(), z.data());
  };
  EXPECT_NO_THROW(call({3, 2, 1, 0}, {0, 1, 4}, 3, 0.92f));
  EXPECT_THROW(call({3, 2, 1, 1}, {0, 1, 4}, 3, 0.92f), ConfigError);     // not a permutation
  EXPECT_THROW(call({3, 2, 1, 4}, {0, 1, 4}, 3, 0.92f), ConfigError);     // out of range
  EXPECT_THROW(call({3, 2, 1, 0}, {0, 2, 2, 4}, 3, 0.92f), ConfigError);  // empty group
  EXPECT_THROW(call({3, 2, 1, 0}, {0, 1, 3}, 3, 0.92f), ConfigError);     // does not end at C
  EXPECT_THROW(call({3, 2, 1, 0}, {1, 4}, 3, 0.92f), ConfigError);        // does not start at 0
  EXPECT_THROW(call({3, 2, 1, 0}, {0, 4}, 4, 0.92f), ConfigError);        // max_int 4
  EXPECT_THROW(call({3, 2, 1, 0}, {0, 4}, 3, 0.0f), ConfigError);         // clip 0
  EXPECT_THROW(call({3, 2, 1, 0}, {0, 4}, 3, NAN), ConfigError);
  std::vector<std::int32_t> big(5000);
  std::iota(big.begin(), big.end(), 0);
  EXPECT_THROW(call(big, {0, 5000}, 3, 0.92f, 5000), ConfigError);  // > 4096 channels
  const float bad_clip[] = {0.9f, -1.0f};
  std::vector<std::int32_t> perm = {0, 1, 2, 3}, starts = {0, 2, 4};
  EXPECT_THROW(cpu_reference::skvq_quantize(x.data(), 1, 4, perm.data(), starts.data(), 2, 3, 0.9f,
                                            bad_clip, codes.data(), s.data(), z.data()),
               ConfigError);
}

TEST(CpuConvertHalf, MatchesHalfHeader) {
  std::vector<float> x = random_uniform(1000, 9, -70000.0f, 70000.0f);
  x.push_back(1e-8f);     // subnormal half
  x.push_back(65520.0f);  // overflows to inf
  std::vector<std::uint16_t> out(x.size());
  cpu_reference::convert_float_to_half(x.data(), static_cast<std::int64_t>(x.size()), out.data());
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(out[i], float_to_half_bits(x[i]));
}

// --- GPU against the CPU references ----------------------------------------------------------

struct PackCase {
  std::int64_t rows, len;
  int bits;
};

class GpuPack : public ::testing::TestWithParam<PackCase> {};

TEST_P(GpuPack, BitIdenticalToCpu) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const PackCase c = GetParam();
  const std::vector<std::uint8_t> codes =
      random_codes(static_cast<std::size_t>(c.rows * c.len), 255, 5 + c.bits);
  const std::size_t nw = static_cast<std::size_t>(c.rows * words_per_row(c.len, c.bits));
  std::vector<std::uint32_t> ref(nw);
  cpu_reference::pack_codes(codes.data(), c.rows, c.len, c.bits, ref.data());
  DeviceBuffer<std::uint8_t> d_codes{std::span<const std::uint8_t>(codes)};
  DeviceBuffer<std::uint32_t> d_words(nw);
  pack_codes(d_codes.data(), c.rows, c.len, c.bits, d_words.data());
  EXPECT_EQ(d_words.to_host(), ref);
  DeviceBuffer<std::uint8_t> d_back(codes.size());
  unpack_codes(d_words.data(), c.rows, c.len, c.bits, d_back.data());
  std::vector<std::uint8_t> ref_back(codes.size());
  cpu_reference::unpack_codes(ref.data(), c.rows, c.len, c.bits, ref_back.data());
  EXPECT_EQ(d_back.to_host(), ref_back);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuPack,
                         ::testing::Values(PackCase{1, 1, 1}, PackCase{3, 7, 3},
                                           PackCase{5, 100, 5}, PackCase{17, 33, 7},
                                           PackCase{1000, 128, 2}, PackCase{4, 4097, 8},
                                           PackCase{64, 1000, 6}, PackCase{333, 129, 4}),
                         [](const auto& info) {
                           return testing::case_name("r", info.param.rows, "_l", info.param.len,
                                                     "_b", info.param.bits);
                         });

struct KiviCase {
  int heads;
  std::int64_t tokens;
  int head_dim, group, bits;
};

std::string kivi_name(const ::testing::TestParamInfo<KiviCase>& info) {
  const KiviCase& c = info.param;
  return testing::case_name("h", c.heads, "_n", c.tokens, "_d", c.head_dim, "_g", c.group, "_b",
                            c.bits);
}

class GpuKivi : public ::testing::TestWithParam<KiviCase> {};

void expect_finite_and_equal(const std::vector<float>& gpu, const std::vector<float>& ref,
                             const char* what) {
  ASSERT_EQ(gpu.size(), ref.size());
  std::int64_t mismatches = 0;
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    ASSERT_TRUE(std::isfinite(gpu[i])) << what << "[" << i << "] = " << gpu[i];
    if (gpu[i] != ref[i] && ++mismatches <= 10) {
      ADD_FAILURE() << what << "[" << i << "]: gpu " << gpu[i] << " ref " << ref[i];
    }
  }
  EXPECT_EQ(mismatches, 0) << what;
}

void expect_halves_equal(const std::vector<std::uint16_t>& gpu,
                         const std::vector<std::uint16_t>& ref, const char* what) {
  for (std::uint16_t h : gpu) ASSERT_FALSE(is_half_nan(h)) << what;
  EXPECT_EQ(gpu, ref) << what;
}

// The two KIVI sides share signatures; a side names its reference and launchers.
struct KiviSide {
  const char* scale_name;
  const char* min_name;
  const char* hat_name;
  Kivi (*quantize_on_cpu)(const std::vector<float>&, int, std::int64_t, int, int, int);
  decltype(&kivi_quantize_keys) quantize;
  decltype(&kivi_dequantize_keys) dequantize;
  decltype(&cpu_reference::kivi_dequantize_keys) dequantize_on_cpu;
};

constexpr KiviSide kKiviKeys{"key scale",
                             "key min",
                             "k_hat",
                             kivi_keys,
                             kivi_quantize_keys,
                             kivi_dequantize_keys,
                             cpu_reference::kivi_dequantize_keys};
constexpr KiviSide kKiviValues{"value scale",
                               "value min",
                               "v_hat",
                               kivi_values,
                               kivi_quantize_values,
                               kivi_dequantize_values,
                               cpu_reference::kivi_dequantize_values};

TEST_P(GpuKivi, KeysAndValuesBitIdenticalToCpu) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const KiviCase c = GetParam();
  const std::vector<float> x = channel_structured(c.heads * c.tokens, c.head_dim, 17 + c.bits);
  DeviceBuffer<float> d_x{std::span<const float>(x)};
  DeviceBuffer<float> d_x_hat(x.size());
  for (const KiviSide& side : {kKiviKeys, kKiviValues}) {
    const Kivi ref = side.quantize_on_cpu(x, c.heads, c.tokens, c.head_dim, c.group, c.bits);
    DeviceBuffer<std::uint32_t> d_codes(ref.codes.size());
    DeviceBuffer<std::uint16_t> d_scale(ref.scale.size()), d_min(ref.minv.size());
    side.quantize(d_x.data(), c.heads, c.tokens, c.head_dim, c.group, c.bits, d_codes.data(),
                  d_scale.data(), d_min.data());
    EXPECT_EQ(d_codes.to_host(), ref.codes) << side.hat_name;
    expect_halves_equal(d_scale.to_host(), ref.scale, side.scale_name);
    expect_halves_equal(d_min.to_host(), ref.minv, side.min_name);
    std::vector<float> ref_hat(x.size());
    side.dequantize_on_cpu(ref.codes.data(), ref.scale.data(), ref.minv.data(), c.heads, c.tokens,
                           c.head_dim, c.group, c.bits, ref_hat.data());
    side.dequantize(d_codes.data(), d_scale.data(), d_min.data(), c.heads, c.tokens, c.head_dim,
                    c.group, c.bits, d_x_hat.data());
    expect_finite_and_equal(d_x_hat.to_host(), ref_hat, side.hat_name);
  }
}

// Odd token counts (partial last groups and word blocks), widths whose words have unused bits
// (3, 5, 6, 7), groups that do not divide head_dim, KIVI's defaults (G = 32, 2 and 4 bits).
INSTANTIATE_TEST_SUITE_P(Shapes, GpuKivi,
                         ::testing::Values(KiviCase{1, 1, 64, 32, 2}, KiviCase{2, 37, 8, 8, 3},
                                           KiviCase{8, 4100, 128, 32, 2},
                                           KiviCase{4, 1000, 128, 128, 4},
                                           KiviCase{3, 333, 96, 20, 5}, KiviCase{2, 64, 256, 32, 8},
                                           KiviCase{1, 257, 7, 3, 1}, KiviCase{2, 999, 64, 32, 6},
                                           KiviCase{1, 50, 33, 32, 7}),
                         kivi_name);

struct SkvqCase {
  std::int64_t rows;
  int channels, groups, max_int;
  bool per_group_clip;
};

class GpuSkvq : public ::testing::TestWithParam<SkvqCase> {};

// A random permutation and a random partition of the slots into `groups` non-empty groups.
SkvqLayout random_layout(int C, int groups, std::uint32_t seed) {
  std::mt19937 rng(seed);
  SkvqLayout L;
  L.perm.resize(static_cast<std::size_t>(C));
  std::iota(L.perm.begin(), L.perm.end(), 0);
  std::shuffle(L.perm.begin(), L.perm.end(), rng);
  std::vector<std::int32_t> cuts(static_cast<std::size_t>(C - 1));
  std::iota(cuts.begin(), cuts.end(), 1);
  std::shuffle(cuts.begin(), cuts.end(), rng);
  cuts.resize(static_cast<std::size_t>(groups - 1));
  std::sort(cuts.begin(), cuts.end());
  L.starts.push_back(0);
  L.starts.insert(L.starts.end(), cuts.begin(), cuts.end());
  L.starts.push_back(C);
  return L;
}

TEST_P(GpuSkvq, BitIdenticalToCpu) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const SkvqCase c = GetParam();
  const SkvqLayout L = random_layout(c.channels, c.groups, 7 + c.channels);
  const std::vector<float> clips =
      random_uniform(static_cast<std::size_t>(c.groups), 8, 0.7f, 1.0f);
  const float* h_clip = c.per_group_clip ? clips.data() : nullptr;
  const std::vector<float> x = channel_structured(c.rows, c.channels, 31 + c.max_int);
  const Skvq ref = skvq(x, c.rows, c.channels, L, c.max_int, 0.92f, h_clip);

  DeviceBuffer<float> d_x{std::span<const float>(x)};
  DeviceBuffer<std::int32_t> d_perm{std::span<const std::int32_t>(L.perm)};
  DeviceBuffer<std::int32_t> d_starts{std::span<const std::int32_t>(L.starts)};
  DeviceBuffer<float> d_clips{std::span<const float>(clips)};
  DeviceBuffer<std::uint32_t> d_codes(ref.codes.size());
  DeviceBuffer<std::uint16_t> d_scale(ref.scale.size()), d_zero(ref.zero.size());
  skvq_quantize(d_x.data(), c.rows, c.channels, d_perm.data(), d_starts.data(), c.groups, c.max_int,
                0.92f, c.per_group_clip ? d_clips.data() : nullptr, d_codes.data(), d_scale.data(),
                d_zero.data());
  EXPECT_EQ(d_codes.to_host(), ref.codes);
  expect_halves_equal(d_scale.to_host(), ref.scale, "scale");
  expect_halves_equal(d_zero.to_host(), ref.zero, "zero");

  std::vector<float> ref_hat(x.size());
  cpu_reference::skvq_dequantize(ref.codes.data(), ref.scale.data(), ref.zero.data(), c.rows,
                                 c.channels, L.perm.data(), L.starts.data(), c.groups, c.max_int,
                                 ref_hat.data());
  DeviceBuffer<float> d_hat(x.size());
  skvq_dequantize(d_codes.data(), d_scale.data(), d_zero.data(), c.rows, c.channels, d_perm.data(),
                  d_starts.data(), c.groups, c.max_int, d_hat.data());
  expect_finite_and_equal(d_hat.to_host(), ref_hat, "x_hat");
}

// One KV head (128 channels, one group: no reordering), k-means-like uneven groups, a whole
// layer (8 x 128 channels), ternary and 1..8-bit widths, odd channel counts.
INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuSkvq,
    ::testing::Values(SkvqCase{1, 1, 1, 3, false}, SkvqCase{100, 128, 1, 3, false},
                      SkvqCase{1000, 128, 7, 2, true}, SkvqCase{257, 1024, 8, 3, false},
                      SkvqCase{33, 1024, 61, 15, true}, SkvqCase{5, 4096, 32, 255, false},
                      SkvqCase{77, 37, 5, 7, true}, SkvqCase{10000, 64, 4, 1, false}),
    [](const auto& info) {
      const SkvqCase& c = info.param;
      return testing::case_name("r", c.rows, "_c", c.channels, "_g", c.groups, "_m", c.max_int,
                                c.per_group_clip ? "_clips" : "");
    });

TEST(GpuConvertHalf, BitIdenticalToCpu) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  std::vector<float> x = random_uniform(100003, 9, -70000.0f, 70000.0f);
  const std::vector<float> small = random_uniform(1000, 10, -1e-4f, 1e-4f);  // subnormal halves
  x.insert(x.end(), small.begin(), small.end());
  std::vector<std::uint16_t> ref(x.size());
  cpu_reference::convert_float_to_half(x.data(), static_cast<std::int64_t>(x.size()), ref.data());
  DeviceBuffer<float> d_x{std::span<const float>(x)};
  DeviceBuffer<std::uint16_t> d_out(x.size());
  convert_float_to_half(d_x.data(), static_cast<std::int64_t>(x.size()), d_out.data());
  EXPECT_EQ(d_out.to_host(), ref);
}

// The launcher copies the layout to the host and rejects it like the reference.
TEST(GpuSkvqLayout, RejectsBadDeviceLayout) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const std::vector<float> x = random_uniform(8, 1);
  const std::vector<std::int32_t> bad_perm = {0, 1, 1, 3}, starts = {0, 4};
  DeviceBuffer<float> d_x{std::span<const float>(x)};
  DeviceBuffer<std::int32_t> d_perm{std::span<const std::int32_t>(bad_perm)};
  DeviceBuffer<std::int32_t> d_starts{std::span<const std::int32_t>(starts)};
  DeviceBuffer<std::uint32_t> d_codes(2);
  DeviceBuffer<std::uint16_t> d_s(2), d_z(2);
  EXPECT_THROW(skvq_quantize(d_x.data(), 2, 4, d_perm.data(), d_starts.data(), 1, 3, 0.9f, nullptr,
                             d_codes.data(), d_s.data(), d_z.data()),
               ConfigError);
  EXPECT_NO_THROW(device_synchronize());
}

// --- argument and backend checks (always run) ---------------------------------------------------

TEST(GpuQuantLaunchers, RejectBadArgumentsBeforeTouchingTheBackend) {
  std::vector<float> x(64, 1.0f);
  std::vector<std::uint8_t> c8(64);
  std::vector<std::uint32_t> c32(64);
  std::vector<std::uint16_t> h(64);
  std::vector<std::int32_t> perm = {0, 1, 2, 3}, starts = {0, 4};
  EXPECT_THROW(pack_codes(c8.data(), 1, 8, 9, c32.data()), ConfigError);
  EXPECT_THROW(unpack_codes(c32.data(), -1, 8, 2, c8.data()), ConfigError);
  EXPECT_THROW(kivi_quantize_keys(x.data(), 1, 4, 4, 0, 2, c32.data(), h.data(), h.data()),
               ConfigError);
  EXPECT_THROW(kivi_dequantize_values(c32.data(), h.data(), h.data(), 0, 4, 4, 2, 2, x.data()),
               ConfigError);
  EXPECT_THROW(skvq_quantize(x.data(), 1, 4, perm.data(), starts.data(), 1, 5, 0.9f, nullptr,
                             c32.data(), h.data(), h.data()),
               ConfigError);
  EXPECT_THROW(skvq_quantize(x.data(), 1, 4, perm.data(), starts.data(), 1, 3, -1.0f, nullptr,
                             c32.data(), h.data(), h.data()),
               ConfigError);
  EXPECT_THROW(convert_float_to_half(nullptr, 4, h.data()), ConfigError);
}

TEST(GpuQuantLaunchers, ThrowBackendUnavailableWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is present";
  std::vector<float> x(64, 1.0f);
  std::vector<std::uint8_t> c8(64);
  std::vector<std::uint32_t> c32(64);
  std::vector<std::uint16_t> h(64);
  std::vector<std::int32_t> perm = {0, 1, 2, 3}, starts = {0, 4};
  EXPECT_THROW(pack_codes(c8.data(), 1, 8, 2, c32.data()), BackendUnavailable);
  EXPECT_THROW(unpack_codes(c32.data(), 1, 8, 2, c8.data()), BackendUnavailable);
  EXPECT_THROW(kivi_quantize_keys(x.data(), 1, 4, 4, 2, 2, c32.data(), h.data(), h.data()),
               BackendUnavailable);
  EXPECT_THROW(kivi_dequantize_keys(c32.data(), h.data(), h.data(), 1, 4, 4, 2, 2, x.data()),
               BackendUnavailable);
  EXPECT_THROW(kivi_quantize_values(x.data(), 1, 4, 4, 2, 2, c32.data(), h.data(), h.data()),
               BackendUnavailable);
  EXPECT_THROW(kivi_dequantize_values(c32.data(), h.data(), h.data(), 1, 4, 4, 2, 2, x.data()),
               BackendUnavailable);
  EXPECT_THROW(skvq_quantize(x.data(), 1, 4, perm.data(), starts.data(), 1, 3, 0.9f, nullptr,
                             c32.data(), h.data(), h.data()),
               BackendUnavailable);
  EXPECT_THROW(skvq_dequantize(c32.data(), h.data(), h.data(), 1, 4, perm.data(), starts.data(), 1,
                               3, x.data()),
               BackendUnavailable);
  EXPECT_THROW(convert_float_to_half(x.data(), 4, h.data()), BackendUnavailable);
}

}  // namespace
}  // namespace kvsim::gpu
