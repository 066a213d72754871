// Benchmarks of the fused replay attention over a KIVI-2 packed cache (CPU reference and GPU
// launcher), and the device-to-device copy that bounds every kernel (conventions:
// gpu/bench/bench_util.h). The attention backend's kernels: gpu_bench_backend.cc.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "gpu/bench/bench_util.h"
#include "gpu/cpu_reference.h"
#include "gpu/kernels.h"
#include "gpu/replay_types.h"

namespace kvsim::gpu::bench {
namespace {

// Device-to-device cudaMemcpy: the practical bandwidth ceiling for every GPU kernel here.
void BM_DeviceMemcpyD2D(benchmark::State& state) {
  run_on_device(state, [&] {
    const auto bytes = static_cast<std::size_t>(state.range(0));
    DeviceBuffer<std::uint8_t> src(bytes), dst(bytes);
    time_on_device(state, [&] { copy_device_to_device(dst.data(), src.data(), bytes); });
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(2 * bytes));
  });
}
BENCHMARK(BM_DeviceMemcpyD2D)
    ->ArgNames({"bytes"})
    ->Arg(1 << 20)
    ->Arg(64 << 20)
    ->Arg(1 << 30)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// ---- fused replay attention -----------------------------------------------------------------
//
// A KIVI-2 (G = 32) layer of kHkv kv heads with an `nr`-token fp16 residual and exact K/V in
// fp16 or fp32, on the host (for the reference) or on the device.

struct HostCache {
  std::vector<float> q, k_ex32, v_ex32;  // k_ex32/v_ex32 stay empty: the host cache is fp16
  std::vector<std::uint32_t> k_codes, v_codes;
  std::vector<std::uint16_t> k_scale, k_min, v_scale, v_min, k_res, v_res, k_ex16, v_ex16;
  std::vector<float> outputs;
  FusedReplayArgs args;
};

struct DeviceCache {
  DeviceBuffer<float> q, k_ex32, v_ex32;
  DeviceBuffer<std::uint16_t> k_ex16, v_ex16, k_res, v_res, k_scale, k_min, v_scale, v_min;
  DeviceBuffer<std::uint32_t> k_codes, v_codes;
  DeviceBuffer<float> outputs;
  FusedReplayArgs args;
};

// Points c.args at the arrays of a HostCache or DeviceCache (outputs: kHq * (2 kD + 6) floats).
template <typename Cache>
void bind_fused_args(Cache& c, std::int64_t nq, std::int64_t nr, bool exact_f16) {
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

HostCache make_host_cache(std::int64_t nq, std::int64_t nr) {
  HostCache c;
  const std::int64_t n = nq + nr;
  c.q = random_floats(kHq * kD, 8);
  std::vector<float> k = random_floats(static_cast<std::size_t>(kHkv * n * kD), 9);
  std::vector<float> v = random_floats(static_cast<std::size_t>(kHkv * n * kD), 10);
  c.k_ex16.resize(k.size());
  c.v_ex16.resize(v.size());
  cpu_reference::convert_float_to_half(k.data(), static_cast<std::int64_t>(k.size()),
                                       c.k_ex16.data());
  cpu_reference::convert_float_to_half(v.data(), static_cast<std::int64_t>(v.size()),
                                       c.v_ex16.data());
  std::vector<float> kq(static_cast<std::size_t>(kHkv * nq * kD)), vq(kq.size());
  for (int h = 0; h < kHkv; ++h) {
    std::copy_n(k.begin() + h * n * kD, nq * kD, kq.begin() + h * nq * kD);
    std::copy_n(v.begin() + h * n * kD, nq * kD, vq.begin() + h * nq * kD);
    c.k_res.insert(c.k_res.end(), c.k_ex16.begin() + (h * n + nq) * kD,
                   c.k_ex16.begin() + (h + 1) * n * kD);
    c.v_res.insert(c.v_res.end(), c.v_ex16.begin() + (h * n + nq) * kD,
                   c.v_ex16.begin() + (h + 1) * n * kD);
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
  bind_fused_args(c, nq, nr, /*exact_f16=*/true);
  return c;
}

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
  bind_fused_args(c, nq, nr, exact_f16);
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
  time_on_host(state, c.outputs.data(), [&] { cpu_reference::fused_replay_attention(c.args); });
  state.SetBytesProcessed(state.iterations() * fused_bytes(n - 128, 128, 2));
}
BENCHMARK(BM_CpuFusedReplay)->ArgNames({"tokens"})->Arg(4096)->Unit(benchmark::kMillisecond);

// The fused replay of one (layer, step): 32 query heads over 8 kv heads, head_dim 128, KIVI-2
// (G = 32) with a 128-token residual, exact K/V in fp16 (exact_bytes 2) or fp32 (4). The
// docs/gpu.md target: >= 60% of BM_DeviceMemcpyD2D's bandwidth from 32k tokens on.
void BM_GpuFusedReplay(benchmark::State& state) {
  run_on_device(state, [&] {
    const std::int64_t n = state.range(0);
    const bool exact_f16 = state.range(1) == 2;
    DeviceCache c;
    make_device_cache(c, n - 128, 128, exact_f16);
    time_on_device(state, [&] { fused_replay_attention(c.args); });
    state.SetBytesProcessed(state.iterations() * fused_bytes(n - 128, 128, exact_f16 ? 2 : 4));
  });
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

}  // namespace
}  // namespace kvsim::gpu::bench
