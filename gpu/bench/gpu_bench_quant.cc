// Benchmarks of the quantization kernels: group quantization, fp16 conversion, bit packing,
// KIVI and SKVQ (CPU references and GPU launchers; conventions: gpu/bench/bench_util.h).
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "gpu/bench/bench_util.h"
#include "gpu/cpu_reference.h"
#include "gpu/kernels.h"

namespace kvsim::gpu::bench {
namespace {

// ---- group quantization ---------------------------------------------------------------------

void BM_CpuQuantize(benchmark::State& state) {
  const std::int64_t groups = state.range(0);
  const int group_size = 128;
  const int bits = static_cast<int>(state.range(1));
  const std::vector<float> x = random_floats(static_cast<std::size_t>(groups * group_size), 4);
  std::vector<std::uint8_t> codes(x.size());
  std::vector<std::uint16_t> scale(static_cast<std::size_t>(groups)), minv(scale.size());
  time_on_host(state, codes.data(), [&] {
    cpu_reference::quantize_groups(x.data(), groups, group_size, bits, codes.data(), scale.data(),
                                   minv.data());
  });
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
  time_on_host(state, x_hat.data(), [&] {
    cpu_reference::dequantize_groups(codes.data(), scale.data(), minv.data(), groups, group_size,
                                     x_hat.data());
  });
  state.SetBytesProcessed(state.iterations() * quant_bytes(groups, group_size));
}
BENCHMARK(BM_CpuDequantize)
    ->ArgNames({"groups"})
    ->Arg(1024)
    ->Arg(16384)
    ->Unit(benchmark::kMicrosecond);

void BM_GpuQuantize(benchmark::State& state) {
  run_on_device(state, [&] {
    const std::int64_t groups = state.range(0);
    const int group_size = static_cast<int>(state.range(1));
    const std::size_t n = static_cast<std::size_t>(groups * group_size);
    DeviceBuffer<float> x(n);
    DeviceBuffer<std::uint8_t> codes(n);
    DeviceBuffer<std::uint16_t> scale(static_cast<std::size_t>(groups)),
        minv(static_cast<std::size_t>(groups));
    fill_uniform(x.data(), n, 4, -1.0f, 1.0f);
    time_on_device(state, [&] {
      quantize_groups(x.data(), groups, group_size, 4, codes.data(), scale.data(), minv.data());
    });
    state.SetBytesProcessed(state.iterations() * quant_bytes(groups, group_size));
  });
}
BENCHMARK(BM_GpuQuantize)
    ->ArgNames({"groups", "group_size"})
    ->Args({1 << 14, 128})
    ->Args({1 << 20, 128})
    ->Args({1 << 22, 32})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_GpuDequantize(benchmark::State& state) {
  run_on_device(state, [&] {
    const std::int64_t groups = state.range(0);
    const int group_size = static_cast<int>(state.range(1));
    const std::size_t n = static_cast<std::size_t>(groups * group_size);
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
  });
}
BENCHMARK(BM_GpuDequantize)
    ->ArgNames({"groups", "group_size"})
    ->Args({1 << 14, 128})
    ->Args({1 << 20, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_GpuConvertHalf(benchmark::State& state) {
  run_on_device(state, [&] {
    const auto count = static_cast<std::size_t>(state.range(0));
    DeviceBuffer<float> x(count);
    fill_uniform(x.data(), count, 22, -1.0f, 1.0f);
    DeviceBuffer<std::uint16_t> out(count);
    time_on_device(state, [&] {
      convert_float_to_half(x.data(), static_cast<std::int64_t>(count), out.data());
    });
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(count * 6));
  });
}
BENCHMARK(BM_GpuConvertHalf)
    ->ArgNames({"count"})
    ->Arg(1 << 26)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// ---- bit packing ----------------------------------------------------------------------------

void BM_CpuPackCodes(benchmark::State& state) {
  const std::int64_t rows = state.range(0);
  const int bits = static_cast<int>(state.range(1));
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(rows * kD));
  for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::uint8_t>(i * 7);
  std::vector<std::uint32_t> words(static_cast<std::size_t>(rows * words_per_row(kD, bits)));
  time_on_host(state, words.data(),
               [&] { cpu_reference::pack_codes(codes.data(), rows, kD, bits, words.data()); });
  state.SetBytesProcessed(state.iterations() *
                          static_cast<std::int64_t>(codes.size() + words.size() * 4));
}
BENCHMARK(BM_CpuPackCodes)
    ->ArgNames({"rows", "bits"})
    ->Args({16384, 2})
    ->Unit(benchmark::kMicrosecond);

void BM_GpuPackCodes(benchmark::State& state) {
  run_on_device(state, [&] {
    const std::int64_t rows = state.range(0);
    const int bits = static_cast<int>(state.range(1));
    const bool unpack = state.range(2) != 0;
    const std::int64_t wpr = words_per_row(kD, bits);
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
  });
}
BENCHMARK(BM_GpuPackCodes)
    ->ArgNames({"rows", "bits", "unpack"})
    ->Args({1 << 20, 2, 0})
    ->Args({1 << 20, 2, 1})
    ->Args({1 << 20, 4, 0})
    ->Args({1 << 20, 4, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// ---- KIVI -----------------------------------------------------------------------------------

void BM_CpuKiviQuantize(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const bool keys = state.range(1) != 0;
  const std::vector<float> x = random_floats(static_cast<std::size_t>(kHkv * n * kD), 6);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(
      keys ? kHkv * words_per_row(n, 2) * kD : kHkv * n * words_per_row(kD, 2)));
  std::vector<std::uint16_t> scale(
      static_cast<std::size_t>(keys ? kHkv * num_groups_of(n, 32) * kD : kHkv * n * (kD / 32)));
  std::vector<std::uint16_t> minv(scale.size());
  time_on_host(state, codes.data(), [&] {
    if (keys) {
      cpu_reference::kivi_quantize_keys(x.data(), kHkv, n, kD, 32, 2, codes.data(), scale.data(),
                                        minv.data());
    } else {
      cpu_reference::kivi_quantize_values(x.data(), kHkv, n, kD, 32, 2, codes.data(), scale.data(),
                                          minv.data());
    }
  });
  const std::int64_t out =
      keys ? kivi_key_bytes(kHkv, n, kD, 32, 2) : kivi_value_bytes(kHkv, n, kD, 32, 2);
  state.SetBytesProcessed(state.iterations() * (static_cast<std::int64_t>(x.size()) * 4 + out));
}
BENCHMARK(BM_CpuKiviQuantize)
    ->ArgNames({"tokens", "keys"})
    ->Args({4096, 1})
    ->Args({4096, 0})
    ->Unit(benchmark::kMicrosecond);

// KIVI keys or values (G = 32) at `bits`: quantize+pack, or dequantize from packed.
void BM_GpuKivi(benchmark::State& state) {
  run_on_device(state, [&] {
    const std::int64_t n = state.range(0);
    const int bits = static_cast<int>(state.range(1));
    const bool keys = state.range(2) != 0;
    const bool dequant = state.range(3) != 0;
    const std::size_t elems = static_cast<std::size_t>(kHkv * n * kD);
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
  });
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

// ---- SKVQ -----------------------------------------------------------------------------------

void BM_CpuSkvqQuantize(benchmark::State& state) {
  const std::int64_t rows = state.range(0);
  const int channels = static_cast<int>(state.range(1));
  const int groups = channels / 128;
  std::vector<std::int32_t> perm, starts;
  skvq_layout(channels, groups, perm, starts);
  const std::vector<float> x = random_floats(static_cast<std::size_t>(rows * channels), 7);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(rows * words_per_row(channels, 2)));
  std::vector<std::uint16_t> scale(static_cast<std::size_t>(rows * groups)), zero(scale.size());
  time_on_host(state, codes.data(), [&] {
    cpu_reference::skvq_quantize(x.data(), rows, channels, perm.data(), starts.data(), groups, 3,
                                 0.92f, nullptr, codes.data(), scale.data(), zero.data());
  });
  state.SetBytesProcessed(
      state.iterations() *
      static_cast<std::int64_t>(x.size() * 4 + codes.size() * 4 + scale.size() * 4));
}
BENCHMARK(BM_CpuSkvqQuantize)
    ->ArgNames({"rows", "channels"})
    ->Args({4096, 1024})
    ->Unit(benchmark::kMicrosecond);

// SKVQ: rows of `channels` (128: one kv head per row; 1024: a layer's 8 kv heads), groups of
// 128 permuted channels, 2 bits (max_int 3); quantize or dequantize.
void BM_GpuSkvq(benchmark::State& state) {
  run_on_device(state, [&] {
    const std::int64_t rows = state.range(0);
    const int channels = static_cast<int>(state.range(1));
    const bool dequant = state.range(2) != 0;
    const int groups = channels / 128;
    std::vector<std::int32_t> h_perm, h_starts;
    skvq_layout(channels, groups, h_perm, h_starts);
    const std::size_t elems = static_cast<std::size_t>(rows * channels);
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
  });
}
BENCHMARK(BM_GpuSkvq)
    ->ArgNames({"rows", "channels", "dequant"})
    ->Args({8 * 32768, 128, 0})
    ->Args({8 * 32768, 128, 1})
    ->Args({32768, 1024, 0})
    ->Args({32768, 1024, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvsim::gpu::bench
