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

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/kernels.h"
#include "gpu/packing.h"
#include "gpu/replay_types.h"
#include "sim/base/errors.h"

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

// Device-to-device cudaMemcpy: the practical bandwidth ceiling for the kernels above and below.
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

// ==== the packed-cache kernels, the fused replay, L2-norm top-k and SLERP ====================
//
// Shapes follow a Llama-3-8B-like layer (32 query heads, 8 kv heads, head_dim 128) with KIVI's
// defaults (2 bits, G = 32, residual 128). bytes_per_second counts each input read once and
// each output written once, as above.

constexpr int kHq = 32;
constexpr int kHkv = 8;
constexpr int kD = 128;

// Bytes of a KIVI key side (codes + fp16 scale/min) and value side for `n` tokens.
std::int64_t kivi_key_bytes(std::int64_t heads, std::int64_t n, int d, int group, int bits) {
  return heads * (words_per_row(n, bits) * d * 4 + num_groups_of(n, group) * d * 4);
}
std::int64_t kivi_value_bytes(std::int64_t heads, std::int64_t n, int d, int group, int bits) {
  return heads * n * (words_per_row(d, bits) * 4 + num_groups_of(d, group) * 4);
}

// ---- CPU references -------------------------------------------------------------------------

void BM_CpuPackCodes(benchmark::State& state) {
  const std::int64_t rows = state.range(0);
  const int bits = static_cast<int>(state.range(1));
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(rows * kD));
  for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::uint8_t>(i * 7);
  std::vector<std::uint32_t> words(static_cast<std::size_t>(rows * words_per_row(kD, bits)));
  for (auto _ : state) {
    cpu_reference::pack_codes(codes.data(), rows, kD, bits, words.data());
    benchmark::DoNotOptimize(words.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() *
                          static_cast<std::int64_t>(codes.size() + words.size() * 4));
}
BENCHMARK(BM_CpuPackCodes)
    ->ArgNames({"rows", "bits"})
    ->Args({16384, 2})
    ->Unit(benchmark::kMicrosecond);

void BM_CpuKiviQuantize(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const bool keys = state.range(1) != 0;
  const std::vector<float> x = random_floats(static_cast<std::size_t>(kHkv * n * kD), 6);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(
      keys ? kHkv * words_per_row(n, 2) * kD : kHkv * n * words_per_row(kD, 2)));
  std::vector<std::uint16_t> scale(
      static_cast<std::size_t>(keys ? kHkv * num_groups_of(n, 32) * kD : kHkv * n * (kD / 32)));
  std::vector<std::uint16_t> minv(scale.size());
  for (auto _ : state) {
    if (keys) {
      cpu_reference::kivi_quantize_keys(x.data(), kHkv, n, kD, 32, 2, codes.data(), scale.data(),
                                        minv.data());
    } else {
      cpu_reference::kivi_quantize_values(x.data(), kHkv, n, kD, 32, 2, codes.data(), scale.data(),
                                          minv.data());
    }
    benchmark::DoNotOptimize(codes.data());
    benchmark::ClobberMemory();
  }
  const std::int64_t out =
      keys ? kivi_key_bytes(kHkv, n, kD, 32, 2) : kivi_value_bytes(kHkv, n, kD, 32, 2);
  state.SetBytesProcessed(state.iterations() * (static_cast<std::int64_t>(x.size()) * 4 + out));
}
BENCHMARK(BM_CpuKiviQuantize)
    ->ArgNames({"tokens", "keys"})
    ->Args({4096, 1})
    ->Args({4096, 0})
    ->Unit(benchmark::kMicrosecond);

// A random permutation and `groups` equal contiguous groups of permuted slots.
void skvq_layout(int channels, int groups, std::vector<std::int32_t>& perm,
                 std::vector<std::int32_t>& starts) {
  perm.resize(static_cast<std::size_t>(channels));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(3));
  starts.clear();
  for (int g = 0; g <= groups; ++g) starts.push_back(g * channels / groups);
}

void BM_CpuSkvqQuantize(benchmark::State& state) {
  const std::int64_t rows = state.range(0);
  const int channels = static_cast<int>(state.range(1));
  const int groups = channels / 128;
  std::vector<std::int32_t> perm, starts;
  skvq_layout(channels, groups, perm, starts);
  const std::vector<float> x = random_floats(static_cast<std::size_t>(rows * channels), 7);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(rows * words_per_row(channels, 2)));
  std::vector<std::uint16_t> scale(static_cast<std::size_t>(rows * groups)), zero(scale.size());
  for (auto _ : state) {
    cpu_reference::skvq_quantize(x.data(), rows, channels, perm.data(), starts.data(), groups, 3,
                                 0.92f, nullptr, codes.data(), scale.data(), zero.data());
    benchmark::DoNotOptimize(codes.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(
      state.iterations() *
      static_cast<std::int64_t>(x.size() * 4 + codes.size() * 4 + scale.size() * 4));
}
BENCHMARK(BM_CpuSkvqQuantize)
    ->ArgNames({"rows", "channels"})
    ->Args({4096, 1024})
    ->Unit(benchmark::kMicrosecond);

// Host copies of a KIVI-2 (G = 32) packed layer with an fp16 residual and fp16 exact K/V.
struct HostCache {
  std::vector<float> q;
  std::vector<std::uint32_t> k_codes, v_codes;
  std::vector<std::uint16_t> k_scale, k_min, v_scale, v_min, k_res, v_res, k_ex, v_ex;
  std::vector<float> outputs;
  FusedReplayArgs args;
};

HostCache make_host_cache(std::int64_t nq, std::int64_t nr) {
  HostCache c;
  const std::int64_t n = nq + nr;
  c.q = random_floats(kHq * kD, 8);
  std::vector<float> k = random_floats(static_cast<std::size_t>(kHkv * n * kD), 9);
  std::vector<float> v = random_floats(static_cast<std::size_t>(kHkv * n * kD), 10);
  c.k_ex.resize(k.size());
  c.v_ex.resize(v.size());
  cpu_reference::convert_float_to_half(k.data(), static_cast<std::int64_t>(k.size()),
                                       c.k_ex.data());
  cpu_reference::convert_float_to_half(v.data(), static_cast<std::int64_t>(v.size()),
                                       c.v_ex.data());
  std::vector<float> kq(static_cast<std::size_t>(kHkv * nq * kD)), vq(kq.size());
  for (int h = 0; h < kHkv; ++h) {
    std::copy_n(k.begin() + h * n * kD, nq * kD, kq.begin() + h * nq * kD);
    std::copy_n(v.begin() + h * n * kD, nq * kD, vq.begin() + h * nq * kD);
    c.k_res.insert(c.k_res.end(), c.k_ex.begin() + (h * n + nq) * kD,
                   c.k_ex.begin() + (h + 1) * n * kD);
    c.v_res.insert(c.v_res.end(), c.v_ex.begin() + (h * n + nq) * kD,
                   c.v_ex.begin() + (h + 1) * n * kD);
  }
  c.k_codes.resize(static_cast<std::size_t>(kHkv * words_per_row(nq, 2) * kD));
  c.k_scale.resize(static_cast<std::size_t>(kHkv * num_groups_of(nq, 32) * kD));
  c.k_min.resize(c.k_scale.size());
  c.v_codes.resize(static_cast<std::size_t>(kHkv * nq * words_per_row(kD, 2)));
  c.v_scale.resize(static_cast<std::size_t>(kHkv * nq * (kD / 32)));
  c.v_min.resize(c.v_scale.size());
  cpu_reference::kivi_quantize_keys(kq.data(), kHkv, nq, kD, 32, 2, c.k_codes.data(),
                                    c.k_scale.data(), c.k_min.data());
  cpu_reference::kivi_quantize_values(vq.data(), kHkv, nq, kD, 32, 2, c.v_codes.data(),
                                      c.v_scale.data(), c.v_min.data());
  c.outputs.resize(static_cast<std::size_t>(kHq * (2 * kD + 6)));
  FusedReplayArgs& a = c.args;
  a.num_q_heads = kHq;
  a.num_kv_heads = kHkv;
  a.head_dim = kD;
  a.num_quant_tokens = nq;
  a.num_residual_tokens = nr;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  a.q = c.q.data();
  a.key_codes = c.k_codes.data();
  a.key_scale = c.k_scale.data();
  a.key_min = c.k_min.data();
  a.value_codes = c.v_codes.data();
  a.value_scale = c.v_scale.data();
  a.value_min = c.v_min.data();
  a.key_residual = c.k_res.data();
  a.value_residual = c.v_res.data();
  a.key_exact_f16 = c.k_ex.data();
  a.value_exact_f16 = c.v_ex.data();
  float* o = c.outputs.data();
  a.out_hat = o;
  a.out = o + kHq * kD;
  a.lse_hat = o + 2 * kHq * kD;
  a.lse = a.lse_hat + kHq;
  a.rel_err = a.lse + kHq;
  a.cosine = a.rel_err + kHq;
  a.kl = a.cosine + kHq;
  a.mass_retained = a.kl + kHq;
  return c;
}

// Minimum traffic of one fused call: the packed cache, the residual, the exact K/V (fp16 or
// fp32), q, and the outputs.
std::int64_t fused_bytes(std::int64_t nq, std::int64_t nr, int exact_bytes) {
  const std::int64_t n = nq + nr;
  return kivi_key_bytes(kHkv, nq, kD, 32, 2) + kivi_value_bytes(kHkv, nq, kD, 32, 2) +
         std::int64_t{kHkv} * nr * kD * 2 * 2 + std::int64_t{kHkv} * n * kD * exact_bytes * 2 +
         std::int64_t{kHq} * kD * 4 + std::int64_t{kHq} * (2 * kD + 6) * 4;
}

void BM_CpuFusedReplay(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  HostCache c = make_host_cache(n - 128, 128);
  for (auto _ : state) {
    cpu_reference::fused_replay_attention(c.args);
    benchmark::DoNotOptimize(c.outputs.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * fused_bytes(n - 128, 128, 2));
}
BENCHMARK(BM_CpuFusedReplay)->ArgNames({"tokens"})->Arg(4096)->Unit(benchmark::kMillisecond);

void BM_CpuKeyNormsTopK(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const std::vector<float> k = random_floats(static_cast<std::size_t>(kHkv * n * kD), 11);
  std::vector<float> norms(static_cast<std::size_t>(kHkv * n));
  std::vector<std::int32_t> kept(static_cast<std::size_t>(kHkv * (n / 2)));
  for (auto _ : state) {
    cpu_reference::key_norms_topk(k.data(), kHkv, n, kD, n / 2, TiePreference::kHigherIndex,
                                  norms.data(), kept.data());
    benchmark::DoNotOptimize(kept.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(
      state.iterations() *
      static_cast<std::int64_t>(k.size() * 4 + norms.size() * 4 + kept.size() * 4));
}
BENCHMARK(BM_CpuKeyNormsTopK)->ArgNames({"tokens"})->Arg(4096)->Unit(benchmark::kMillisecond);

void BM_CpuSlerpMerge(benchmark::State& state) {
  const std::int64_t rows = state.range(0);
  const std::vector<float> xa = random_floats(static_cast<std::size_t>(rows * kD), 12);
  const std::vector<float> xb = random_floats(static_cast<std::size_t>(rows * kD), 13);
  std::vector<std::uint16_t> dir(xa.size()), na(static_cast<std::size_t>(rows)), nb(na.size());
  std::vector<double> dist(na.size());
  std::vector<std::uint8_t> merged(na.size());
  for (auto _ : state) {
    cpu_reference::slerp_merge(xa.data(), xb.data(), rows, kD, 0.6, dir.data(), na.data(),
                               nb.data(), dist.data(), merged.data());
    benchmark::DoNotOptimize(dir.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * rows * (kD * (4 + 4 + 2) + 2 + 2 + 8 + 1));
}
BENCHMARK(BM_CpuSlerpMerge)->ArgNames({"rows"})->Arg(8 * 4096)->Unit(benchmark::kMillisecond);

// ---- GPU -------------------------------------------------------------------------------------

void BM_GpuPackCodes(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t rows = state.range(0);
  const int bits = static_cast<int>(state.range(1));
  const bool unpack = state.range(2) != 0;
  const std::int64_t wpr = words_per_row(kD, bits);
  try {
    DeviceBuffer<std::uint8_t> codes(static_cast<std::size_t>(rows * kD));
    DeviceBuffer<std::uint32_t> words(static_cast<std::size_t>(rows * wpr));
    pack_codes(codes.data(), rows, kD, bits, words.data());  // contents do not matter
    time_on_device(state, [&] {
      if (unpack) {
        unpack_codes(words.data(), rows, kD, bits, codes.data());
      } else {
        pack_codes(codes.data(), rows, kD, bits, words.data());
      }
    });
    state.SetBytesProcessed(state.iterations() * (rows * kD + rows * wpr * 4));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuPackCodes)
    ->ArgNames({"rows", "bits", "unpack"})
    ->Args({1 << 20, 2, 0})
    ->Args({1 << 20, 2, 1})
    ->Args({1 << 20, 4, 0})
    ->Args({1 << 20, 4, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// KIVI keys or values (G = 32) at `bits`: quantize+pack, or dequantize from packed.
void BM_GpuKivi(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t n = state.range(0);
  const int bits = static_cast<int>(state.range(1));
  const bool keys = state.range(2) != 0;
  const bool dequant = state.range(3) != 0;
  const std::size_t elems = static_cast<std::size_t>(kHkv * n * kD);
  try {
    DeviceBuffer<float> x(elems), x_hat(elems);
    fill_uniform(x.data(), elems, 14, -1.0f, 1.0f);
    DeviceBuffer<std::uint32_t> codes(static_cast<std::size_t>(
        keys ? kHkv * words_per_row(n, bits) * kD : kHkv * n * words_per_row(kD, bits)));
    const std::size_t params = static_cast<std::size_t>(keys ? kHkv * num_groups_of(n, 32) * kD
                                                             : kHkv * n * num_groups_of(kD, 32));
    DeviceBuffer<std::uint16_t> scale(params), minv(params);
    auto quantize = [&] {
      if (keys) {
        kivi_quantize_keys(x.data(), kHkv, n, kD, 32, bits, codes.data(), scale.data(),
                           minv.data());
      } else {
        kivi_quantize_values(x.data(), kHkv, n, kD, 32, bits, codes.data(), scale.data(),
                             minv.data());
      }
    };
    quantize();
    time_on_device(state, [&] {
      if (!dequant) {
        quantize();
      } else if (keys) {
        kivi_dequantize_keys(codes.data(), scale.data(), minv.data(), kHkv, n, kD, 32, bits,
                             x_hat.data());
      } else {
        kivi_dequantize_values(codes.data(), scale.data(), minv.data(), kHkv, n, kD, 32, bits,
                               x_hat.data());
      }
    });
    const std::int64_t packed =
        keys ? kivi_key_bytes(kHkv, n, kD, 32, bits) : kivi_value_bytes(kHkv, n, kD, 32, bits);
    state.SetBytesProcessed(state.iterations() * (static_cast<std::int64_t>(elems) * 4 + packed));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuKivi)
    ->ArgNames({"tokens", "bits", "keys", "dequant"})
    ->Args({32768, 2, 1, 0})
    ->Args({32768, 2, 0, 0})
    ->Args({32768, 2, 1, 1})
    ->Args({32768, 2, 0, 1})
    ->Args({131072, 4, 1, 0})
    ->Args({131072, 4, 0, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// SKVQ: rows of `channels` (128: one kv head per row; 1024: a layer's 8 kv heads), groups of
// 128 permuted channels, 2 bits (max_int 3); quantize or dequantize.
void BM_GpuSkvq(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t rows = state.range(0);
  const int channels = static_cast<int>(state.range(1));
  const bool dequant = state.range(2) != 0;
  const int groups = channels / 128;
  std::vector<std::int32_t> h_perm, h_starts;
  skvq_layout(channels, groups, h_perm, h_starts);
  const std::size_t elems = static_cast<std::size_t>(rows * channels);
  try {
    DeviceBuffer<float> x(elems), x_hat(elems);
    fill_uniform(x.data(), elems, 15, -1.0f, 1.0f);
    DeviceBuffer<std::int32_t> perm{std::span<const std::int32_t>(h_perm)};
    DeviceBuffer<std::int32_t> starts{std::span<const std::int32_t>(h_starts)};
    DeviceBuffer<std::uint32_t> codes(static_cast<std::size_t>(rows * words_per_row(channels, 2)));
    DeviceBuffer<std::uint16_t> scale(static_cast<std::size_t>(rows * groups)),
        zero(static_cast<std::size_t>(rows * groups));
    auto quantize = [&] {
      skvq_quantize(x.data(), rows, channels, perm.data(), starts.data(), groups, 3, 0.92f, nullptr,
                    codes.data(), scale.data(), zero.data());
    };
    quantize();
    time_on_device(state, [&] {
      if (dequant) {
        skvq_dequantize(codes.data(), scale.data(), zero.data(), rows, channels, perm.data(),
                        starts.data(), groups, 3, x_hat.data());
      } else {
        quantize();
      }
    });
    state.SetBytesProcessed(
        state.iterations() *
        static_cast<std::int64_t>(elems * 4 + codes.bytes() + scale.bytes() + zero.bytes()));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuSkvq)
    ->ArgNames({"rows", "channels", "dequant"})
    ->Args({8 * 32768, 128, 0})
    ->Args({8 * 32768, 128, 1})
    ->Args({32768, 1024, 0})
    ->Args({32768, 1024, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// Device copies of a KIVI-2 (G = 32) layer of 8 kv heads with a 128-token fp16 residual and
// exact K/V in fp16 or fp32, generated on the device.
struct DeviceCache {
  DeviceBuffer<float> q, k_ex32, v_ex32;
  DeviceBuffer<std::uint16_t> k_ex16, v_ex16, k_res, v_res, k_scale, k_min, v_scale, v_min;
  DeviceBuffer<std::uint32_t> k_codes, v_codes;
  DeviceBuffer<float> outputs;
  FusedReplayArgs args;
};

// One side (keys or values): random exact values, its quantized first nq tokens and residual.
void make_device_side(std::int64_t nq, std::int64_t nr, bool keys, bool exact_f16,
                      std::uint64_t seed, DeviceBuffer<float>& ex32,
                      DeviceBuffer<std::uint16_t>& ex16, DeviceBuffer<std::uint16_t>& res,
                      DeviceBuffer<std::uint32_t>& codes, DeviceBuffer<std::uint16_t>& scale,
                      DeviceBuffer<std::uint16_t>& minv) {
  const std::int64_t n = nq + nr;
  DeviceBuffer<float> x(static_cast<std::size_t>(kHkv * n * kD));
  fill_uniform(x.data(), x.size(), seed, -1.0f, 1.0f);
  DeviceBuffer<float> xq(static_cast<std::size_t>(kHkv * nq * kD));
  DeviceBuffer<float> xr(static_cast<std::size_t>(kHkv * nr * kD));
  for (int h = 0; h < kHkv; ++h) {
    copy_device_to_device(xq.data() + h * nq * kD, x.data() + h * n * kD,
                          static_cast<std::size_t>(nq * kD) * sizeof(float));
    copy_device_to_device(xr.data() + h * nr * kD, x.data() + (h * n + nq) * kD,
                          static_cast<std::size_t>(nr * kD) * sizeof(float));
  }
  res = DeviceBuffer<std::uint16_t>(xr.size());
  convert_float_to_half(xr.data(), static_cast<std::int64_t>(xr.size()), res.data());
  if (keys) {
    codes = DeviceBuffer<std::uint32_t>(static_cast<std::size_t>(kHkv * words_per_row(nq, 2) * kD));
    scale =
        DeviceBuffer<std::uint16_t>(static_cast<std::size_t>(kHkv * num_groups_of(nq, 32) * kD));
    minv = DeviceBuffer<std::uint16_t>(scale.size());
    kivi_quantize_keys(xq.data(), kHkv, nq, kD, 32, 2, codes.data(), scale.data(), minv.data());
  } else {
    codes = DeviceBuffer<std::uint32_t>(static_cast<std::size_t>(kHkv * nq * words_per_row(kD, 2)));
    scale = DeviceBuffer<std::uint16_t>(static_cast<std::size_t>(kHkv * nq * (kD / 32)));
    minv = DeviceBuffer<std::uint16_t>(scale.size());
    kivi_quantize_values(xq.data(), kHkv, nq, kD, 32, 2, codes.data(), scale.data(), minv.data());
  }
  if (exact_f16) {
    ex16 = DeviceBuffer<std::uint16_t>(x.size());
    convert_float_to_half(x.data(), static_cast<std::int64_t>(x.size()), ex16.data());
  } else {
    ex32 = std::move(x);
  }
  device_synchronize();
}

void make_device_cache(DeviceCache& c, std::int64_t nq, std::int64_t nr, bool exact_f16) {
  c.q = DeviceBuffer<float>(kHq * kD);
  fill_uniform(c.q.data(), c.q.size(), 16, -1.0f, 1.0f);
  make_device_side(nq, nr, true, exact_f16, 17, c.k_ex32, c.k_ex16, c.k_res, c.k_codes, c.k_scale,
                   c.k_min);
  make_device_side(nq, nr, false, exact_f16, 18, c.v_ex32, c.v_ex16, c.v_res, c.v_codes, c.v_scale,
                   c.v_min);
  c.outputs = DeviceBuffer<float>(static_cast<std::size_t>(kHq * (2 * kD + 6)));
  FusedReplayArgs& a = c.args;
  a.num_q_heads = kHq;
  a.num_kv_heads = kHkv;
  a.head_dim = kD;
  a.num_quant_tokens = nq;
  a.num_residual_tokens = nr;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  a.q = c.q.data();
  a.key_codes = c.k_codes.data();
  a.key_scale = c.k_scale.data();
  a.key_min = c.k_min.data();
  a.value_codes = c.v_codes.data();
  a.value_scale = c.v_scale.data();
  a.value_min = c.v_min.data();
  a.key_residual = c.k_res.data();
  a.value_residual = c.v_res.data();
  if (exact_f16) {
    a.key_exact_f16 = c.k_ex16.data();
    a.value_exact_f16 = c.v_ex16.data();
  } else {
    a.key_exact_f32 = c.k_ex32.data();
    a.value_exact_f32 = c.v_ex32.data();
  }
  float* o = c.outputs.data();
  a.out_hat = o;
  a.out = o + kHq * kD;
  a.lse_hat = o + 2 * kHq * kD;
  a.lse = a.lse_hat + kHq;
  a.rel_err = a.lse + kHq;
  a.cosine = a.rel_err + kHq;
  a.kl = a.cosine + kHq;
  a.mass_retained = a.kl + kHq;
}

// The fused replay of one (layer, step): 32 query heads over 8 kv heads, head_dim 128, KIVI-2
// (G = 32) with a 128-token residual, exact K/V in fp16 (exact_bytes 2) or fp32 (4). The
// docs/gpu.md target: >= 60% of BM_DeviceMemcpyD2D's bandwidth from 32k tokens on.
void BM_GpuFusedReplay(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t n = state.range(0);
  const bool exact_f16 = state.range(1) == 2;
  try {
    DeviceCache c;
    make_device_cache(c, n - 128, 128, exact_f16);
    time_on_device(state, [&] { fused_replay_attention(c.args); });
    state.SetBytesProcessed(state.iterations() * fused_bytes(n - 128, 128, exact_f16 ? 2 : 4));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuFusedReplay)
    ->ArgNames({"tokens", "exact_bytes"})
    ->Args({4096, 2})
    ->Args({32768, 2})
    ->Args({131072, 2})
    ->Args({32768, 4})
    ->Args({131072, 4})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_GpuKeyNormsTopK(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t n = state.range(0);
  const std::int64_t keep = n / 2;
  try {
    DeviceBuffer<float> k(static_cast<std::size_t>(kHkv * n * kD));
    fill_uniform(k.data(), k.size(), 19, -1.0f, 1.0f);
    DeviceBuffer<float> norms(static_cast<std::size_t>(kHkv * n));
    DeviceBuffer<std::int32_t> kept(static_cast<std::size_t>(kHkv * keep));
    time_on_device(state, [&] {
      key_norms_topk(k.data(), kHkv, n, kD, keep, TiePreference::kHigherIndex, norms.data(),
                     kept.data());
    });
    state.SetBytesProcessed(state.iterations() *
                            static_cast<std::int64_t>(k.bytes() + norms.bytes() + kept.bytes()));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuKeyNormsTopK)
    ->ArgNames({"tokens"})
    ->Arg(4096)
    ->Arg(32768)
    ->Arg(131072)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_GpuSlerp(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t rows = state.range(0);
  const bool restore = state.range(1) != 0;
  const std::size_t elems = static_cast<std::size_t>(rows * kD);
  try {
    DeviceBuffer<float> xa(elems), xb(elems), x_hat(elems);
    fill_uniform(xa.data(), elems, 20, -1.0f, 1.0f);
    fill_uniform(xb.data(), elems, 21, -1.0f, 1.0f);
    DeviceBuffer<std::uint16_t> dir(elems), na(static_cast<std::size_t>(rows)),
        nb(static_cast<std::size_t>(rows));
    DeviceBuffer<double> dist(static_cast<std::size_t>(rows));
    DeviceBuffer<std::uint8_t> merged(static_cast<std::size_t>(rows));
    auto merge = [&] {
      slerp_merge(xa.data(), xb.data(), rows, kD, 0.6, dir.data(), na.data(), nb.data(),
                  dist.data(), merged.data());
    };
    merge();
    time_on_device(state, [&] {
      if (restore) {
        slerp_restore(dir.data(), na.data(), rows, kD, x_hat.data());
      } else {
        merge();
      }
    });
    const std::int64_t bytes =
        restore ? rows * (kD * (2 + 4) + 2) : rows * (kD * (4 + 4 + 2) + 2 + 2 + 8 + 1);
    state.SetBytesProcessed(state.iterations() * bytes);
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuSlerp)
    ->ArgNames({"rows", "restore"})
    ->Args({8 * 32768, 0})
    ->Args({8 * 32768, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_GpuConvertHalf(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const auto count = static_cast<std::size_t>(state.range(0));
  try {
    DeviceBuffer<float> x(count);
    fill_uniform(x.data(), count, 22, -1.0f, 1.0f);
    DeviceBuffer<std::uint16_t> out(count);
    time_on_device(state, [&] {
      convert_float_to_half(x.data(), static_cast<std::int64_t>(count), out.data());
    });
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(count * 6));
  } catch (const kvsim::Error& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_GpuConvertHalf)
    ->ArgNames({"count"})
    ->Arg(1 << 26)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvsim::gpu
