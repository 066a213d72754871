// Benchmarks of the replay hot-path kernels: the CPU references always, the GPU launchers and
// a device-to-device copy when a CUDA device is visible (otherwise they report
// "no CUDA device" and are skipped).
//
// bytes_per_second counts the bytes each call must move to and from memory at least once
// (inputs read + outputs written; a K/V row shared by several query heads counts once), so the
// GPU numbers compare directly with the memory bandwidth measured by BM_DeviceMemcpyD2D
// (which counts read + write, i.e. twice the copied size). GPU times are taken with CUDA
// events around each call (manual time), CPU times are wall-clock.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/kernels.h"
#include "sim/errors.h"

namespace kvsim::gpu {
namespace {

std::vector<float> random_floats(std::size_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> values(count);
  for (float& x : values) x = dist(rng);
  return values;
}

struct AttentionShape {
  int num_q_heads;
  int num_kv_heads;
  std::int64_t num_tokens;
  int head_dim;

  std::size_t q_elems() const { return static_cast<std::size_t>(num_q_heads) * head_dim; }
  std::size_t kv_elems() const {
    return static_cast<std::size_t>(num_kv_heads) * static_cast<std::size_t>(num_tokens) *
           static_cast<std::size_t>(head_dim);
  }
  // q + k + v read, out + lse written.
  std::int64_t bytes() const {
    return static_cast<std::int64_t>((2 * q_elems() + 2 * kv_elems() + num_q_heads) *
                                     sizeof(float));
  }
};

// Quantize: x read, codes + scale + minv written. Dequantize: the reverse.
std::int64_t quant_bytes(std::int64_t groups, int group_size) {
  const std::int64_t n = groups * group_size;
  return n * static_cast<std::int64_t>(sizeof(float) + sizeof(std::uint8_t)) +
         groups * 2 * static_cast<std::int64_t>(sizeof(std::uint16_t));
}

bool skip_without_device(benchmark::State& state) {
  if (cuda_device_available()) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

// ---- CPU references (kept small: the build machine may have 2 cores) ---------------------

void BM_CpuReplayAttention(benchmark::State& state) {
  const AttentionShape s{8, 2, state.range(0), static_cast<int>(state.range(1))};
  const std::vector<float> q = random_floats(s.q_elems(), 1);
  const std::vector<float> k = random_floats(s.kv_elems(), 2);
  const std::vector<float> v = random_floats(s.kv_elems(), 3);
  std::vector<float> out(s.q_elems()), lse(static_cast<std::size_t>(s.num_q_heads));
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  for (auto _ : state) {
    cpu_reference::replay_attention(q.data(), k.data(), v.data(), s.num_q_heads, s.num_kv_heads,
                                    s.num_tokens, s.head_dim, scale, out.data(), lse.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * s.bytes());
}
BENCHMARK(BM_CpuReplayAttention)
    ->ArgNames({"tokens", "head_dim"})
    ->Args({1024, 128})
    ->Args({8192, 128})
    ->Unit(benchmark::kMicrosecond);

void BM_CpuQuantize(benchmark::State& state) {
  const std::int64_t groups = state.range(0);
  const int group_size = 128;
  const int bits = static_cast<int>(state.range(1));
  const std::vector<float> x = random_floats(static_cast<std::size_t>(groups * group_size), 4);
  std::vector<std::uint8_t> codes(x.size());
  std::vector<std::uint16_t> scale(static_cast<std::size_t>(groups)), minv(scale.size());
  for (auto _ : state) {
    cpu_reference::quantize_groups(x.data(), groups, group_size, bits, codes.data(), scale.data(),
                                   minv.data());
    benchmark::DoNotOptimize(codes.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * quant_bytes(groups, group_size));
}
BENCHMARK(BM_CpuQuantize)
    ->ArgNames({"groups", "bits"})
    ->Args({1024, 4})
    ->Args({16384, 4})
    ->Args({16384, 8})
    ->Unit(benchmark::kMicrosecond);

void BM_CpuDequantize(benchmark::State& state) {
  const std::int64_t groups = state.range(0);
  const int group_size = 128;
  const std::vector<float> x = random_floats(static_cast<std::size_t>(groups * group_size), 5);
  std::vector<std::uint8_t> codes(x.size());
  std::vector<std::uint16_t> scale(static_cast<std::size_t>(groups)), minv(scale.size());
  cpu_reference::quantize_groups(x.data(), groups, group_size, 4, codes.data(), scale.data(),
                                 minv.data());
  std::vector<float> x_hat(x.size());
  for (auto _ : state) {
    cpu_reference::dequantize_groups(codes.data(), scale.data(), minv.data(), groups, group_size,
                                     x_hat.data());
    benchmark::DoNotOptimize(x_hat.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * quant_bytes(groups, group_size));
}
BENCHMARK(BM_CpuDequantize)
    ->ArgNames({"groups"})
    ->Arg(1024)
    ->Arg(16384)
    ->Unit(benchmark::kMicrosecond);

// ---- GPU ----------------------------------------------------------------------------------

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

void BM_GpuReplayAttention(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const AttentionShape s{static_cast<int>(state.range(2)), 8, state.range(0),
                         static_cast<int>(state.range(1))};
  try {
    DeviceBuffer<float> q(s.q_elems()), k(s.kv_elems()), v(s.kv_elems()), out(s.q_elems()),
        lse(static_cast<std::size_t>(s.num_q_heads));
    fill_uniform(q.data(), q.size(), 1, -1.0f, 1.0f);
    fill_uniform(k.data(), k.size(), 2, -1.0f, 1.0f);
    fill_uniform(v.data(), v.size(), 3, -1.0f, 1.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    time_on_device(state, [&] {
      replay_attention(q.data(), k.data(), v.data(), s.num_q_heads, s.num_kv_heads, s.num_tokens,
                       s.head_dim, scale, out.data(), lse.data());
    });
    state.SetBytesProcessed(state.iterations() * s.bytes());
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuReplayAttention)
    ->ArgNames({"tokens", "head_dim", "q_heads"})
    ->Args({4096, 128, 32})
    ->Args({65536, 128, 32})
    ->Args({1 << 20, 128, 32})
    ->Args({65536, 64, 32})
    ->Args({65536, 256, 32})
    ->Args({65536, 128, 8})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_GpuQuantize(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t groups = state.range(0);
  const int group_size = static_cast<int>(state.range(1));
  const std::size_t n = static_cast<std::size_t>(groups * group_size);
  try {
    DeviceBuffer<float> x(n);
    DeviceBuffer<std::uint8_t> codes(n);
    DeviceBuffer<std::uint16_t> scale(static_cast<std::size_t>(groups)),
        minv(static_cast<std::size_t>(groups));
    fill_uniform(x.data(), n, 4, -1.0f, 1.0f);
    time_on_device(state, [&] {
      quantize_groups(x.data(), groups, group_size, 4, codes.data(), scale.data(), minv.data());
    });
    state.SetBytesProcessed(state.iterations() * quant_bytes(groups, group_size));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuQuantize)
    ->ArgNames({"groups", "group_size"})
    ->Args({1 << 14, 128})
    ->Args({1 << 20, 128})
    ->Args({1 << 22, 32})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_GpuDequantize(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t groups = state.range(0);
  const int group_size = static_cast<int>(state.range(1));
  const std::size_t n = static_cast<std::size_t>(groups * group_size);
  try {
    DeviceBuffer<float> x(n), x_hat(n);
    DeviceBuffer<std::uint8_t> codes(n);
    DeviceBuffer<std::uint16_t> scale(static_cast<std::size_t>(groups)),
        minv(static_cast<std::size_t>(groups));
    fill_uniform(x.data(), n, 5, -1.0f, 1.0f);
    quantize_groups(x.data(), groups, group_size, 4, codes.data(), scale.data(), minv.data());
    time_on_device(state, [&] {
      dequantize_groups(codes.data(), scale.data(), minv.data(), groups, group_size, x_hat.data());
    });
    state.SetBytesProcessed(state.iterations() * quant_bytes(groups, group_size));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuDequantize)
    ->ArgNames({"groups", "group_size"})
    ->Args({1 << 14, 128})
    ->Args({1 << 20, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// Device-to-device cudaMemcpy: the practical bandwidth ceiling for the kernels above.
void BM_DeviceMemcpyD2D(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const auto bytes = static_cast<std::size_t>(state.range(0));
  try {
    DeviceBuffer<std::uint8_t> src(bytes), dst(bytes);
    time_on_device(state, [&] { copy_device_to_device(dst.data(), src.data(), bytes); });
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(2 * bytes));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_DeviceMemcpyD2D)
    ->ArgNames({"bytes"})
    ->Arg(1 << 20)
    ->Arg(64 << 20)
    ->Arg(1 << 30)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvsim::gpu
