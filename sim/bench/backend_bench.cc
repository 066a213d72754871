// End-to-end replay of the `bench` synthetic shape (32 layers, 32/8 heads, d = 128, 4096 tokens,
// the last 256 decoded, every 16th measured) through the CPU backend and the CUDA backend
// (docs/gpu.md, docs/performance.md). Per iteration: every layer's unit data (exact attention)
// and the policy's replay of it; the synthetic layers are generated outside the timing, one at
// a time (all 32 would take 3 GiB). The CUDA cases skip without a GPU.
#include <benchmark/benchmark.h>

#include <memory>

#include "gpu/device.h"
#include "gpu/gpu_backend.h"
#include "sim/cpu_backend.h"
#include "sim/engine.h"
#include "trace/synth.h"

namespace kvsim {
namespace {

void BM_EndToEndReplay(benchmark::State& state, const std::string& device,
                       const std::string& spec_text) {
  std::unique_ptr<gpu::GpuBackend> cuda;
  if (device == "cuda") {
    if (!gpu::cuda_device_available()) {
      state.SkipWithError("no CUDA device");
      return;
    }
    cuda = gpu::make_cuda_backend(0);
  }
  const AttentionBackend& backend = cuda ? *cuda : cpu_backend();
  SynthConfig config = synth_preset("bench");
  config.prompt_len = config.tokens - 256;
  const TraceMeta meta = synth_meta(config);
  const PolicySpec spec = PolicySpec::parse(spec_text);
  const MeasureRule measure = MeasureRule::parse("stride=16");
  const SequenceInfo info{config.tokens, config.prompt_len};
  double attended = 0;  // query . key products of the exact and compressed attention
  for (auto _ : state) {
    for (int layer = 0; layer < config.model_layers; ++layer) {
      state.PauseTiming();
      SynthConfig one = config;
      one.keep_layers = {layer};
      std::vector<LayerData> layers = synth_sequence(one, 0);
      layers[0].slot = 0;
      state.ResumeTiming();
      const UnitData unit =
          make_unit_data(meta, 0, info, {0}, std::move(layers), measure, &backend);
      const RunResult r = replay_unit(meta, unit, spec, {}, 0, nullptr, &backend);
      benchmark::DoNotOptimize(r.steps.data());
    }
  }
  for (int64_t t = config.prompt_len; t < config.tokens; t += 16) attended += 2.0 * (t + 1);
  state.counters["layers/s"] = benchmark::Counter(
      static_cast<double>(config.model_layers) * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["qk/s"] =
      benchmark::Counter(attended * meta.num_q_heads * config.model_layers * state.iterations(),
                         benchmark::Counter::kIsRate);
}

#define KVSIM_END_TO_END(name, device, spec)                                         \
  BENCHMARK_CAPTURE(BM_EndToEndReplay, name, std::string(device), std::string(spec)) \
      ->Unit(benchmark::kSecond)                                                     \
      ->Iterations(1)                                                                \
      ->UseRealTime()
KVSIM_END_TO_END(cpu_full, "cpu", "full");
KVSIM_END_TO_END(cuda_full, "cuda", "full");
KVSIM_END_TO_END(cpu_kivi2, "cpu", "kivi:bits=2");
KVSIM_END_TO_END(cuda_kivi2, "cuda", "kivi:bits=2");
KVSIM_END_TO_END(cpu_h2o, "cpu", "h2o");
KVSIM_END_TO_END(cuda_h2o, "cuda", "h2o");

}  // namespace
}  // namespace kvsim
