// Backend detection (gpu/device.h) and device memory helpers (gpu/device_buffer.h).
#include "gpu/device.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "gpu/device_buffer.h"
#include "sim/base/errors.h"
#include "tests/gpu/test_util.h"

namespace kvsim::gpu {
namespace {

TEST(Device, AvailabilityIsConsistent) {
  if (cuda_device_available()) {
    EXPECT_TRUE(cuda_compiled());
  }
  EXPECT_FALSE(device_description().empty());
  std::cout << "[ info     ] cuda_compiled=" << cuda_compiled()
            << " device: " << device_description() << "\n";
}

// The message tells a build without CUDA apart from a machine without a GPU.
TEST(Device, RequireCudaThrowsBackendUnavailableWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is present";
  try {
    require_cuda();
    FAIL() << "require_cuda() did not throw";
  } catch (const BackendUnavailable& e) {
    const std::string msg = e.what();
    if (cuda_compiled()) {
      EXPECT_NE(msg.find("no GPU device is visible"), std::string::npos) << msg;
      EXPECT_NE(msg.find("cudaGetDeviceCount"), std::string::npos) << msg;
    } else {
      EXPECT_NE(msg.find("no CUDA support"), std::string::npos) << msg;
      EXPECT_NE(msg.find("KVSIM_ENABLE_CUDA=ON"), std::string::npos) << msg;
    }
  }
}

TEST(Device, RequireCudaPassesWithDevice) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  EXPECT_NO_THROW(require_cuda());
}

TEST(DeviceBuffer, ThrowsBackendUnavailableWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_THROW(DeviceBuffer<float>(16), BackendUnavailable);
  EXPECT_THROW(DeviceTimer(), BackendUnavailable);
  EXPECT_THROW(device_synchronize(), BackendUnavailable);
  EXPECT_NO_THROW(device_free(nullptr));
  EXPECT_NO_THROW(DeviceBuffer<float>());  // empty: nothing to allocate or free
}

TEST(DeviceBuffer, RoundTripsAndCopies) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const std::vector<float> host = testing::random_uniform(1000, 5);
  DeviceBuffer<float> a{std::span<const float>(host)};
  DeviceBuffer<float> b(host.size());
  copy_device_to_device(b.data(), a.data(), a.bytes());
  EXPECT_EQ(b.to_host(), host);
  DeviceBuffer<float> moved = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(moved.size(), host.size());
  std::vector<float> wrong_size(3);
  EXPECT_THROW(moved.download(wrong_size), ConfigError);
}

TEST(DeviceBuffer, FillUniformIsDeterministicAndInRange) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<float> a(100000), b(100000);
  fill_uniform(a.data(), a.size(), 42, -2.0f, 3.0f);
  fill_uniform(b.data(), b.size(), 42, -2.0f, 3.0f);
  const std::vector<float> ha = a.to_host();
  EXPECT_EQ(ha, b.to_host());
  double sum = 0.0;
  for (float x : ha) {
    ASSERT_GE(x, -2.0f);
    ASSERT_LT(x, 3.0f);
    sum += x;
  }
  EXPECT_NEAR(sum / static_cast<double>(ha.size()), 0.5, 0.05);
}

TEST(DeviceTimer, MeasuresNonNegativeTime) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<float> a(1 << 20);
  DeviceTimer timer;
  timer.start();
  fill_uniform(a.data(), a.size(), 1, 0.0f, 1.0f);
  EXPECT_GE(timer.stop(), 0.0);
}

}  // namespace
}  // namespace kvsim::gpu
