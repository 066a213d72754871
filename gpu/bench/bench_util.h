// Shared fixtures of the kvsim_gpu_bench benchmarks (gpu/bench/gpu_bench_*.cc): random inputs,
// the device guard and timer, the benchmark layer shape and the byte counts of the packed
// layouts.
//
// bytes_per_second counts the bytes each call must move to and from memory at least once
// (inputs read + outputs written; a K/V row shared by several query heads counts once), so the
// GPU numbers compare directly with the memory bandwidth measured by BM_DeviceMemcpyD2D
// (which counts read + write, i.e. twice the copied size). GPU times are taken with CUDA
// events around each call (manual time), CPU times are wall-clock. Without a CUDA device the
// GPU benchmarks report "no CUDA device" and are skipped.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/packing.h"
#include "sim/base/errors.h"

namespace kvsim::gpu::bench {

// The layer of the packed-cache, fused-replay, top-k and SLERP benchmarks: Llama-3-8B-like
// (32 query heads, 8 kv heads, head_dim 128), with KIVI's defaults (2 bits, G = 32).
constexpr int kHq = 32;
constexpr int kHkv = 8;
constexpr int kD = 128;

inline std::vector<float> random_floats(std::size_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> values(count);
  for (float& x : values) x = dist(rng);
  return values;
}

// Runs `call` once per iteration on the host; `output` is kept alive against the optimizer.
template <typename Call>
void time_on_host(benchmark::State& state, const void* output, Call&& call) {
  for (auto _ : state) {
    call();
    benchmark::DoNotOptimize(output);
    benchmark::ClobberMemory();
  }
}

// Runs `setup_and_time(state)` when a CUDA device is visible, else skips the benchmark; a
// kvsim::Error (a failed allocation or launch) skips it with the error's message.
template <typename Body>
void run_on_device(benchmark::State& state, Body&& setup_and_time) {
  if (!cuda_device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  try {
    setup_and_time();
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}

// Runs `call` once per iteration between CUDA events and reports the event time.
template <typename Call>
void time_on_device(benchmark::State& state, Call&& call) {
  call();  // warm-up (first launch, workspace pool)
  device_synchronize();
  DeviceTimer timer;
  for (auto _ : state) {
    timer.start();
    call();
    state.SetIterationTime(timer.stop());
  }
}

// Group quantization: x read, codes + scale + minv written. Dequantization: the reverse.
inline std::int64_t quant_bytes(std::int64_t groups, int group_size) {
  const std::int64_t n = groups * group_size;
  return n * static_cast<std::int64_t>(sizeof(float) + sizeof(std::uint8_t)) +
         groups * 2 * static_cast<std::int64_t>(sizeof(std::uint16_t));
}

// Bytes of a KIVI key side (codes + fp16 scale/min) and value side for `n` tokens.
inline std::int64_t kivi_key_bytes(std::int64_t heads, std::int64_t n, int d, int group, int bits) {
  return heads * (words_per_row(n, bits) * d * 4 + num_groups_of(n, group) * d * 4);
}
inline std::int64_t kivi_value_bytes(std::int64_t heads, std::int64_t n, int d, int group,
                                     int bits) {
  return heads * n * (words_per_row(d, bits) * 4 + num_groups_of(d, group) * 4);
}

// A random permutation and `groups` equal contiguous groups of permuted slots (SKVQ).
inline void skvq_layout(int channels, int groups, std::vector<std::int32_t>& perm,
                        std::vector<std::int32_t>& starts) {
  perm.resize(static_cast<std::size_t>(channels));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(3));
  starts.clear();
  for (int g = 0; g <= groups; ++g) starts.push_back(g * channels / groups);
}

}  // namespace kvsim::gpu::bench
