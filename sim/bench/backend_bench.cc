// End-to-end replay of the `bench` synthetic shape (32 layers, 32/8 heads, d = 128, 4096 tokens,
// the last 256 decoded, every 16th measured) through the CPU backend and the CUDA backend
// (docs/gpu.md, docs/performance.md). Per iteration: every layer's unit data (exact attention)
// and the policy's replay of it, the layers in parallel on the process's threads as in
// `kvsim replay`; the synthetic trace is generated once, before the first timing. The CUDA
// cases skip without a GPU.
#include <benchmark/benchmark.h>

#include <memory>

#include "gpu/device.h"
#include "gpu/gpu_backend.h"
#include "sim/cpu_backend.h"
#include "sim/engine.h"
#include "trace/synth.h"

namespace kvsim {
namespace {

// The synthetic trace's one sequence, all layers, generated once (3 GiB).
struct EndToEndFixture {
  SynthConfig config;
  TraceMeta meta;
  std::vector<LayerData> layers;
  EndToEndFixture() {
    config = synth_preset("bench");
    config.prompt_len = config.tokens - 256;
    meta = synth_meta(config);
    layers = synth_sequence(config, 0);
  }
};

EndToEndFixture& end_to_end_fixture() {
  static EndToEndFixture f;
  return f;
}

// The units of every layer on the process's threads, as `kvsim replay` runs them: per unit the
// exact attention (make_unit_data) and the policy's replay (replay_unit).
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
  EndToEndFixture& f = end_to_end_fixture();
  const PolicySpec spec = PolicySpec::parse(spec_text);
  const MeasureRule measure = MeasureRule::parse("stride=16");
  const SequenceInfo info{f.config.tokens, f.config.prompt_len};
  const int num_layers = static_cast<int>(f.layers.size());
  for (auto _ : state) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int layer = 0; layer < num_layers; ++layer) {
      // The layer moves into the unit and back: no copy of the 3 GiB.
      UnitData unit = make_unit_data(f.meta, 0, info, {f.layers[layer].slot},
                                     {std::move(f.layers[layer])}, measure, &backend);
      const RunResult r = replay_unit(f.meta, unit, spec, {}, 0, nullptr, &backend);
      benchmark::DoNotOptimize(r.steps.data());
      f.layers[layer] = std::move(unit.layers[0]);
    }
  }
  double attended = 0;  // query . key products of the exact and compressed attention
  for (int64_t t = f.config.prompt_len; t < f.config.tokens; t += 16) attended += 2.0 * (t + 1);
  state.counters["layers/s"] = benchmark::Counter(
      static_cast<double>(num_layers) * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["qk/s"] = benchmark::Counter(
      attended * f.meta.num_q_heads * num_layers * state.iterations(), benchmark::Counter::kIsRate);
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
