// Google Benchmark binary for the replay core. Throughput is reported as
// query.key.dim products per second ("qkd/s" counter), next to the machine's
// measured peak of a plain FMA loop (BM_PeakFma, FLOP/s) in the same run.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <vector>

#include "sim/base/attention.h"
#include "sim/base/rng.h"
#include "sim/cpu_backend.h"
#include "sim/engine.h"
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

// A shard replay of the `bench` synthetic shape (4096 tokens, 32/8 heads,
// d = 128) on two layers (so that MiniCache has a pair), the last 16 decode
// steps measured, per policy. Everything the replay does per policy is timed:
// prefill, the policy's own steps at every decode step, and the measurement.
struct ReplayFixture {
  SynthConfig config;
  TraceMeta meta;
  std::vector<LayerData> layers;
  std::vector<int64_t> measured;
  std::vector<ExactLayer> exact;
  ReplayFixture() {
    config = synth_preset("bench");
    config.model_layers = 2;
    config.prompt_len = config.tokens - 16;
    meta = synth_meta(config);
    layers = synth_sequence(config, 0);
    measured = MeasureRule::parse("all").steps(config.prompt_len, config.tokens);
    for (const auto& l : layers) exact.push_back(cpu_backend().exact_attention(meta, l, measured));
  }
};

const ReplayFixture& fixture() {
  static const ReplayFixture f;
  return f;
}

void BM_ReplayLayer(benchmark::State& state, const std::string& spec_text) {
  const ReplayFixture& f = fixture();
  const PolicySpec spec = PolicySpec::parse(spec_text);
  spec.check_against(f.meta);
  double products = 0;
  for (auto _ : state) {
    for (const auto& group : spec.layer_slot_groups(f.meta)) {
      std::vector<const LayerData*> layers;
      std::vector<const ExactLayer*> exact;
      for (int slot : group) layers.push_back(&f.layers[slot]), exact.push_back(&f.exact[slot]);
      RunResult r = replay_shard(f.meta, 0, f.config.prompt_len, group, layers, exact, spec, {},
                                 f.measured, 0);
      benchmark::DoNotOptimize(r.steps.data());
    }
  }
  // Query.key.dim products of the compressed attention at the measured steps,
  // counted as if every token were cached, so policies compare on equal work.
  for (int64_t t : f.measured) {
    products += 2.0 * static_cast<double>(t + 1) * f.meta.num_q_heads * f.meta.head_dim;
  }
  state.counters["qkd/s"] =
      benchmark::Counter(products * state.iterations(), benchmark::Counter::kIsRate);
}
#define KVSIM_REPLAY_BENCH(name, spec)                       \
  BENCHMARK_CAPTURE(BM_ReplayLayer, name, std::string(spec)) \
      ->Unit(benchmark::kMillisecond)                        \
      ->UseRealTime()
KVSIM_REPLAY_BENCH(full, "full");
KVSIM_REPLAY_BENCH(uniform4, "uniform:bits=4");
KVSIM_REPLAY_BENCH(streamingllm, "streamingllm:window=1020");
KVSIM_REPLAY_BENCH(kivi2, "kivi:bits=2");
KVSIM_REPLAY_BENCH(skvq2, "skvq");
KVSIM_REPLAY_BENCH(mikv, "mikv");
KVSIM_REPLAY_BENCH(l2norm, "l2norm:skip=[]");
KVSIM_REPLAY_BENCH(h2o, "h2o");
KVSIM_REPLAY_BENCH(snapkv, "snapkv");
KVSIM_REPLAY_BENCH(minicache, "minicache:start=0");
KVSIM_REPLAY_BENCH(h2o_kivi, "h2o+kivi");
KVSIM_REPLAY_BENCH(minicache_kivi4, "minicache:start=0+kivi:bits=4");

}  // namespace
}  // namespace kvsim
