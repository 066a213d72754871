// GPU launchers (gpu/kernels.h) against the CPU references on random inputs. The comparison
// tests skip when no CUDA device is visible; the argument and backend checks always run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/kernels.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"
#include "tests/gpu/test_util.h"

namespace kvsim::gpu {
namespace {

using testing::random_uniform;

// --- quantization -------------------------------------------------------------------------

struct QuantCase {
  std::int64_t num_groups;
  int group_size;
  int bits;
};

class GpuQuantize : public ::testing::TestWithParam<QuantCase> {};

std::string quant_case_name(const ::testing::TestParamInfo<QuantCase>& info) {
  const QuantCase& c = info.param;
  return testing::case_name("g", c.num_groups, "_s", c.group_size, "_b", c.bits);
}

// Random groups; every 17th group is constant (the scale16 == 0 path) and every 5th is shifted
// so that the groups do not all share one range.
std::vector<float> quant_input(const QuantCase& c, std::uint32_t seed) {
  std::vector<float> x =
      random_uniform(static_cast<std::size_t>(c.num_groups * c.group_size), seed, -3.0f, 3.0f);
  for (std::int64_t g = 0; g < c.num_groups; ++g) {
    float* xg = x.data() + g * c.group_size;
    if (g % 17 == 16) std::fill(xg, xg + c.group_size, xg[0]);
    if (g % 5 == 4) {
      for (int i = 0; i < c.group_size; ++i) xg[i] = 10.0f + 0.25f * xg[i];
    }
  }
  return x;
}

// Tolerance. Both sides evaluate the same IEEE float operations in the same order (exact
// min/max, explicitly rounded sub/div on the device, -ffp-contract=off on the host, round to
// nearest even for fp16 and for the code), so codes, scale and minv must be bit-identical. The
// only mismatch tolerated is a code off by one where the pre-rounding value is within 1e-6 of a
// .5 tie; it is counted separately and is expected to be zero as well.
TEST_P(GpuQuantize, MatchesCpuReferenceExactly) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const QuantCase c = GetParam();
  const std::vector<float> x = quant_input(c, 21 + c.bits);
  const std::size_t n = x.size();
  const auto groups = static_cast<std::size_t>(c.num_groups);

  std::vector<std::uint8_t> ref_codes(n);
  std::vector<std::uint16_t> ref_scale(groups), ref_minv(groups);
  cpu_reference::quantize_groups(x.data(), c.num_groups, c.group_size, c.bits, ref_codes.data(),
                                 ref_scale.data(), ref_minv.data());

  DeviceBuffer<float> d_x{std::span<const float>(x)};
  DeviceBuffer<std::uint8_t> d_codes(n);
  DeviceBuffer<std::uint16_t> d_scale(groups), d_minv(groups);
  quantize_groups(d_x.data(), c.num_groups, c.group_size, c.bits, d_codes.data(), d_scale.data(),
                  d_minv.data());
  const std::vector<std::uint8_t> codes = d_codes.to_host();
  const std::vector<std::uint16_t> scale = d_scale.to_host();
  const std::vector<std::uint16_t> minv = d_minv.to_host();

  EXPECT_EQ(scale, ref_scale);
  EXPECT_EQ(minv, ref_minv);
  std::int64_t tie_mismatches = 0;
  std::int64_t mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (codes[i] == ref_codes[i]) continue;
    const std::size_t g = i / static_cast<std::size_t>(c.group_size);
    const float t = (x[i] - half_bits_to_float(ref_minv[g])) / half_bits_to_float(ref_scale[g]);
    const bool near_tie = std::fabs(t - std::floor(t) - 0.5f) < 1e-6f;
    if (near_tie && std::abs(codes[i] - ref_codes[i]) == 1) {
      ++tie_mismatches;
    } else if (++mismatches <= 10) {
      ADD_FAILURE() << "code[" << i << "]: gpu " << int{codes[i]} << " ref " << int{ref_codes[i]}
                    << " (x " << x[i] << ", pre-rounding " << t << ")";
    }
  }
  EXPECT_EQ(mismatches, 0);
  RecordProperty("tie_mismatches", std::to_string(tie_mismatches));

  // Dequantize the reference codes on both sides: bit-identical and finite.
  std::vector<float> ref_x_hat(n);
  cpu_reference::dequantize_groups(ref_codes.data(), ref_scale.data(), ref_minv.data(),
                                   c.num_groups, c.group_size, ref_x_hat.data());
  d_codes.upload(ref_codes);
  d_scale.upload(ref_scale);
  d_minv.upload(ref_minv);
  DeviceBuffer<float> d_x_hat(n);
  dequantize_groups(d_codes.data(), d_scale.data(), d_minv.data(), c.num_groups, c.group_size,
                    d_x_hat.data());
  const std::vector<float> x_hat = d_x_hat.to_host();
  std::int64_t dequant_mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_TRUE(std::isfinite(x_hat[i])) << "x_hat[" << i << "] = " << x_hat[i];
    if (x_hat[i] != ref_x_hat[i] && ++dequant_mismatches <= 10) {
      ADD_FAILURE() << "x_hat[" << i << "]: gpu " << x_hat[i] << " ref " << ref_x_hat[i];
    }
  }
  EXPECT_EQ(dequant_mismatches, 0);
}

// Group sizes below, at and above the warp width (7, 32, 4100), group counts that do not fill
// a block of 8 warps, and every bit width class.
INSTANTIATE_TEST_SUITE_P(Shapes, GpuQuantize,
                         ::testing::Values(QuantCase{1, 1, 4}, QuantCase{7, 32, 4},
                                           QuantCase{257, 128, 2}, QuantCase{4100, 64, 8},
                                           QuantCase{33, 7, 3}, QuantCase{1000, 100, 1},
                                           QuantCase{3, 4100, 5}, QuantCase{4100, 128, 4},
                                           QuantCase{100000, 32, 6}),
                         quant_case_name);

// The hand-worked example of the CPU test (ties to even included) on the GPU.
TEST(GpuQuantizeExample, HandWorkedFourBits) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const std::vector<float> x = {0.0f, 0.5f, 1.5f, 15.0f, 2.5f,  15.0f, 7.5f, 0.0f,
                                3.0f, 3.0f, 3.0f, 3.0f,  -1.0f, 1.0f,  0.0f, 0.3f};
  DeviceBuffer<float> d_x{std::span<const float>(x)};
  DeviceBuffer<std::uint8_t> d_codes(x.size());
  DeviceBuffer<std::uint16_t> d_scale(4), d_minv(4);
  quantize_groups(d_x.data(), 4, 4, 4, d_codes.data(), d_scale.data(), d_minv.data());
  EXPECT_EQ(d_codes.to_host(),
            (std::vector<std::uint8_t>{0, 0, 2, 15, 2, 15, 8, 0, 0, 0, 0, 0, 0, 15, 8, 10}));
  EXPECT_EQ(d_minv.to_host(), (std::vector<std::uint16_t>{0x0000, 0x0000, 0x4200, 0xBC00}));
  EXPECT_EQ(d_scale.to_host(), (std::vector<std::uint16_t>{0x3C00, 0x3C00, 0x0000, 0x3044}));
}

// --- argument and backend checks ----------------------------------------------------------

// Bad sizes are ConfigError whether or not a GPU exists: arguments are checked first.
TEST(GpuLaunchers, RejectBadArgumentsBeforeTouchingTheBackend) {
  std::vector<float> buf(1024, 1.0f);
  float* p = buf.data();
  std::vector<std::uint8_t> codes(16);
  std::vector<std::uint16_t> halfs(4);
  EXPECT_THROW(quantize_groups(p, 4, 4, 9, codes.data(), halfs.data(), halfs.data()), ConfigError);
  EXPECT_THROW(quantize_groups(p, 4, 0, 4, codes.data(), halfs.data(), halfs.data()), ConfigError);
  EXPECT_THROW(dequantize_groups(codes.data(), halfs.data(), halfs.data(), -1, 4, p), ConfigError);
}

TEST(GpuLaunchers, ThrowBackendUnavailableWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is present";
  std::vector<float> buf(1024, 1.0f);
  float* p = buf.data();
  std::vector<std::uint8_t> codes(16);
  std::vector<std::uint16_t> halfs(4);
  EXPECT_THROW(quantize_groups(p, 4, 4, 4, codes.data(), halfs.data(), halfs.data()),
               BackendUnavailable);
  EXPECT_THROW(dequantize_groups(codes.data(), halfs.data(), halfs.data(), 4, 4, p),
               BackendUnavailable);
}

// Host memory passed to a launcher is a ConfigError, not a dead CUDA context.
TEST(GpuLaunchers, RejectHostPointers) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  std::vector<float> host(4 * 64, 1.0f);
  DeviceBuffer<float> dev(4 * 64);
  float* h = host.data();
  float* d = dev.data();
  fill_uniform(d, dev.size(), 3, -1.0f, 1.0f);
  DeviceBuffer<std::uint8_t> codes(16);
  DeviceBuffer<std::uint16_t> halfs(4);
  EXPECT_THROW(quantize_groups(h, 4, 4, 4, codes.data(), halfs.data(), halfs.data()), ConfigError);
  // The device is still usable afterwards.
  EXPECT_NO_THROW(quantize_groups(d, 4, 4, 4, codes.data(), halfs.data(), halfs.data()));
  EXPECT_NO_THROW(device_synchronize());
}

}  // namespace
}  // namespace kvsim::gpu
