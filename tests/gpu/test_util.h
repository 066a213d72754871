// Shared helpers for the tests of the GPU layer.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gpu/device.h"

namespace kvsim::gpu::testing {

// Uniform values in [lo, hi) from a fixed-seed generator. With lo < 0 < hi the chance of an
// all-zero buffer is nil, and the seed makes every run see the same data.
inline std::vector<float> random_uniform(std::size_t count, std::uint32_t seed, float lo = -1.0f,
                                         float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(count);
  for (float& x : values) x = dist(rng);
  return values;
}

// A parameterised case's name from its labels and values in order, e.g.
// case_name("r", 3, "_d", 64) == "r3_d64" (integers and strings only: names must be valid).
template <typename... Parts>
std::string case_name(const Parts&... parts) {
  std::ostringstream name;
  (name << ... << parts);
  return name.str();
}

}  // namespace kvsim::gpu::testing

// Skips the current test, saying why, unless a CUDA device is usable.
#define KVSIM_SKIP_WITHOUT_CUDA_DEVICE()                                        \
  do {                                                                          \
    if (!::kvsim::gpu::cuda_device_available()) {                               \
      GTEST_SKIP() << "no CUDA device: " << ::kvsim::gpu::device_description(); \
    }                                                                           \
  } while (0)
