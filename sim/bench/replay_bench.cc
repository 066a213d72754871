// Google Benchmark binary for the replay core. Throughput is reported as
// query.key.dim products per second ("qkd/s" counter), next to the machine's
// measured peak of a plain FMA loop (BM_PeakFma, FLOP/s) in the same run.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <vector>

#include "sim/attention.h"
#include "sim/engine.h"
#include "sim/rng.h"
#include "trace/synth.h"

namespace kvsim {
namespace {

std::vector<float> random_vector(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

// Peak of a plain FMA loop: 64 independent accumulators, 2 FLOP per update.
void BM_PeakFma(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  constexpr int kLanes = 64, kIters = 1 << 16;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      alignas(64) float acc[kLanes];
      for (int i = 0; i < kLanes; ++i) acc[i] = 1.0f + i * 1e-3f;
      const float a = 0.999999f, b = 1e-7f;
      for (int it = 0; it < kIters; ++it) {
#pragma omp simd
        for (int i = 0; i < kLanes; ++i) acc[i] = acc[i] * a + b;
      }
      benchmark::DoNotOptimize(acc);
    }
  }
  state.counters["FLOP/s"] = benchmark::Counter(
      2.0 * kLanes * kIters * threads * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_PeakFma)->Arg(1)->Arg(2)->UseRealTime();

// One decode step of one layer: 32 query heads (GQA 4:1 over 8 kv heads) attend
// over n cached keys with d = 128: scores, softmax, weighted sum of values.
void BM_AttentionLayerStep(benchmark::State& state) {
  const size_t n = state.range(0);
  constexpr int kKvHeads = 8, kGroup = 4, kDim = 128;
  const auto q = random_vector(kKvHeads * kGroup * kDim, 1);
  const auto k = random_vector(kKvHeads * n * kDim, 2);
  const auto v = random_vector(kKvHeads * n * kDim, 3);
  std::vector<float> scores(kGroup * n), out(kGroup * kDim);
  for (auto _ : state) {
    for (int h = 0; h < kKvHeads; ++h) {
      score_rows(q.data() + h * kGroup * kDim, kGroup, k.data() + h * n * kDim, n, kDim, 0.088f,
                 scores.data());
      for (int j = 0; j < kGroup; ++j) softmax_inplace(scores.data() + j * n, n);
      weighted_sum(scores.data(), kGroup, v.data() + h * n * kDim, n, kDim, out.data());
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["qkd/s"] =
      benchmark::Counter(static_cast<double>(kKvHeads) * kGroup * n * kDim * state.iterations(),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_AttentionLayerStep)->Arg(1024)->Arg(4096)->UseRealTime();

// A whole shard replay of one layer of the `bench` synthetic trace (4096
// tokens, 32/8 heads, d = 128), last 16 decode steps measured, per policy.
void BM_ReplayLayer(benchmark::State& state, const std::string& spec_text) {
  SynthConfig config = synth_preset("bench");
  config.model_layers = 1;
  config.prompt_len = config.tokens - 16;
  const TraceMeta meta = synth_meta(config);
  const auto layers = synth_sequence(config, 0);
  const PolicySpec spec = PolicySpec::parse(spec_text);
  const auto measured = MeasureRule::parse("all").steps(config.prompt_len, config.tokens);
  const ExactLayer exact = compute_exact(meta, layers[0], measured);
  for (auto _ : state) {
    RunResult r = replay_shard(meta, 0, config.prompt_len, {0}, {&layers[0]}, {&exact}, spec, {},
                               measured, 0);
    benchmark::DoNotOptimize(r.steps.data());
  }
  // Products of the compressed attention at the measured steps (cache ~ all tokens).
  double products = 0;
  for (int64_t t : measured)
    products += static_cast<double>(t + 1) * meta.num_q_heads * meta.head_dim;
  state.counters["qkd/s"] =
      benchmark::Counter(products * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_ReplayLayer, full, std::string("full"))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_ReplayLayer, uniform4, std::string("uniform:bits=4"))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_ReplayLayer, streamingllm, std::string("streamingllm:window=1020"))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace kvsim
