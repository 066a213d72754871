// Benchmarks of the eviction and merge kernels: L2-norm top-k selection and MiniCache's SLERP
// merge/restore (CPU references and GPU launchers; conventions: gpu/bench/bench_util.h).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "gpu/bench/bench_util.h"
#include "gpu/cpu_reference.h"
#include "gpu/kernels.h"

namespace kvsim::gpu::bench {
namespace {

// ---- L2-norm top-k --------------------------------------------------------------------------

void BM_CpuKeyNormsTopK(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const std::vector<float> k = random_floats(static_cast<std::size_t>(kHkv * n * kD), 11);
  std::vector<float> norms(static_cast<std::size_t>(kHkv * n));
  std::vector<std::int32_t> kept(static_cast<std::size_t>(kHkv * (n / 2)));
  time_on_host(state, kept.data(), [&] {
    cpu_reference::key_norms_topk(k.data(), kHkv, n, kD, n / 2, TiePreference::kHigherIndex,
                                  norms.data(), kept.data());
  });
  state.SetBytesProcessed(
      state.iterations() *
      static_cast<std::int64_t>(k.size() * 4 + norms.size() * 4 + kept.size() * 4));
}
BENCHMARK(BM_CpuKeyNormsTopK)->ArgNames({"tokens"})->Arg(4096)->Unit(benchmark::kMillisecond);

void BM_GpuKeyNormsTopK(benchmark::State& state) {
  run_on_device(state, [&] {
    const std::int64_t n = state.range(0);
    const std::int64_t keep = n / 2;
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
  });
}
BENCHMARK(BM_GpuKeyNormsTopK)
    ->ArgNames({"tokens"})
    ->Arg(4096)
    ->Arg(32768)
    ->Arg(131072)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// ---- SLERP merge / restore ------------------------------------------------------------------

// xa, xb read; direction, both norms, distance and the merged flag written.
constexpr std::int64_t kSlerpMergeBytesPerRow = kD * (4 + 4 + 2) + 2 + 2 + 8 + 1;
// direction and norm read, x_hat written.
constexpr std::int64_t kSlerpRestoreBytesPerRow = kD * (2 + 4) + 2;

void BM_CpuSlerpMerge(benchmark::State& state) {
  const std::int64_t rows = state.range(0);
  const std::vector<float> xa = random_floats(static_cast<std::size_t>(rows * kD), 12);
  const std::vector<float> xb = random_floats(static_cast<std::size_t>(rows * kD), 13);
  std::vector<std::uint16_t> dir(xa.size()), na(static_cast<std::size_t>(rows)), nb(na.size());
  std::vector<double> dist(na.size());
  std::vector<std::uint8_t> merged(na.size());
  time_on_host(state, dir.data(), [&] {
    cpu_reference::slerp_merge(xa.data(), xb.data(), rows, kD, 0.6, dir.data(), na.data(),
                               nb.data(), dist.data(), merged.data());
  });
  state.SetBytesProcessed(state.iterations() * rows * kSlerpMergeBytesPerRow);
}
BENCHMARK(BM_CpuSlerpMerge)->ArgNames({"rows"})->Arg(8 * 4096)->Unit(benchmark::kMillisecond);

void BM_GpuSlerp(benchmark::State& state) {
  run_on_device(state, [&] {
    const std::int64_t rows = state.range(0);
    const bool restore = state.range(1) != 0;
    const std::size_t elems = static_cast<std::size_t>(rows * kD);
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
    const std::int64_t bytes = rows * (restore ? kSlerpRestoreBytesPerRow : kSlerpMergeBytesPerRow);
    state.SetBytesProcessed(state.iterations() * bytes);
  });
}
BENCHMARK(BM_GpuSlerp)
    ->ArgNames({"rows", "restore"})
    ->Args({8 * 32768, 0})
    ->Args({8 * 32768, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvsim::gpu::bench
