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

// A decode-attention case of replay_attention (the reference's tests and the GPU's).
struct AttentionCase {
  int num_q_heads;
  int num_kv_heads;
  std::int64_t num_tokens;
  int head_dim;
  float scale_multiplier;  // scale = multiplier / sqrt(head_dim); larger -> peakier softmax
};

inline std::string attention_case_name(const ::testing::TestParamInfo<AttentionCase>& info) {
  const AttentionCase& c = info.param;
  return case_name("q", c.num_q_heads, "_kv", c.num_kv_heads, "_n", c.num_tokens, "_d", c.head_dim,
                   "_x", static_cast<int>(c.scale_multiplier));
}

// Uniform q, k, v in [-1, 1) from seeds seed, seed + 1, seed + 2, and the case's scale.
struct AttentionData {
  std::vector<float> q, k, v;
  float scale;
};

inline AttentionData make_attention_data(const AttentionCase& c, std::uint32_t seed) {
  const auto kv_size = static_cast<std::size_t>(c.num_kv_heads * c.num_tokens * c.head_dim);
  return {random_uniform(static_cast<std::size_t>(c.num_q_heads * c.head_dim), seed),
          random_uniform(kv_size, seed + 1), random_uniform(kv_size, seed + 2),
          c.scale_multiplier / std::sqrt(static_cast<float>(c.head_dim))};
}

}  // namespace kvsim::gpu::testing

// Skips the current test, saying why, unless a CUDA device is usable.
#define KVSIM_SKIP_WITHOUT_CUDA_DEVICE()                                        \
  do {                                                                          \
    if (!::kvsim::gpu::cuda_device_available()) {                               \
      GTEST_SKIP() << "no CUDA device: " << ::kvsim::gpu::device_description(); \
    }                                                                           \
  } while (0)
