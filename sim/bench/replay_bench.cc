// Google Benchmark binary for the replay core. Throughput is reported as
// query.key.dim products per second ("qkd/s" counter), next to the machine's
// measured peak of a plain FMA loop (BM_PeakFma, FLOP/s) in the same run.
#include <benchmark/benchmark.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "sim/base/attention.h"
#include "sim/base/heap.h"
#include "sim/base/rng.h"
#include "sim/cpu_backend.h"
#include "sim/engine.h"
#include "trace/synth.h"
#include "trace/trace.h"

namespace kvsim {
namespace {

std::vector<float> random_vector(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

// The allocator as the kvsim executable sets it (freed blocks stay in the heap).
const bool kHeapTuned = (keep_freed_memory(), true);

// The machine is shared: with --benchmark_repetitions, the least disturbed repetition ("min")
// is reported next to the median.
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// Peak of a plain multiply-add loop: 256 independent accumulators (16 AVX-512 registers, enough
// chains to hide the latency), 2 FLOP per update. `fused`: std::fma, one instruction. The
// project compiles with -ffp-contract=off (results bit-identical across machines), so its
// kernels issue a multiply and an add where the fused loop issues one FMA: the unfused peak is
// their ceiling, the fused one the chip's.
template <bool fused>
void peak_flops(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  constexpr int kLanes = 256, kIters = 1 << 14;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      alignas(64) float acc[kLanes];
      for (int i = 0; i < kLanes; ++i) acc[i] = 1.0f + i * 1e-3f;
      const float a = 0.999999f, b = 1e-7f;
      for (int it = 0; it < kIters; ++it) {
#pragma omp simd
        for (int i = 0; i < kLanes; ++i) acc[i] = fused ? std::fma(acc[i], a, b) : acc[i] * a + b;
      }
      benchmark::DoNotOptimize(acc);
    }
  }
  state.counters["FLOP/s"] = benchmark::Counter(
      2.0 * kLanes * kIters * threads * state.iterations(), benchmark::Counter::kIsRate);
}
void BM_PeakFma(benchmark::State& state) { peak_flops<false>(state); }
void BM_PeakFmaFused(benchmark::State& state) { peak_flops<true>(state); }
BENCHMARK(BM_PeakFma)->Arg(1)->Arg(2)->UseRealTime()->ComputeStatistics("min", min_of);
BENCHMARK(BM_PeakFmaFused)->Arg(1)->UseRealTime()->ComputeStatistics("min", min_of);

// Stream-read bandwidth of one thread: the sum of a 512 MiB float array (16 lanes), far
// larger than the caches. bytes_per_second is the read rate.
void BM_StreamRead(benchmark::State& state) {
  static const std::vector<float> data(size_t{128} << 20, 1.0f);
  for (auto _ : state) {
    float lanes[kSumLanes] = {};
    for (size_t i = 0; i < data.size(); i += kSumLanes) {
#pragma omp simd
      for (int l = 0; l < kSumLanes; ++l) lanes[l] += data[i + l];
    }
    benchmark::DoNotOptimize(lanes);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * data.size() * sizeof(float)));
}
BENCHMARK(BM_StreamRead)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ComputeStatistics("min", min_of);

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

// Reading and checking a whole trace (TraceReader::read_layer of every layer): the default
// synthetic preset at 4096 tokens (8 layers, 8/2 heads, d = 64, fp16: 50 MB), written once to
// a temporary file. bytes_per_second counts the float32 produced (twice the bytes read).
struct TemporaryTrace {
  std::string path = "/tmp/kvsim_bench_trace_" + std::to_string(getpid()) + ".h5";
  TemporaryTrace() {
    SynthConfig config = synth_preset("default");
    config.tokens = 4096;
    config.prompt_len = 4000;
    write_synth_trace(path, config);
  }
  ~TemporaryTrace() { std::remove(path.c_str()); }
};

void BM_TraceRead(benchmark::State& state) {
  static const TemporaryTrace trace;
  const TraceReader reader(trace.path);
  size_t bytes = 0;
  for (auto _ : state) {
    bytes = 0;
    for (int slot = 0; slot < reader.meta().num_layers(); ++slot) {
      const LayerData layer = reader.read_layer(0, slot);
      bytes += sizeof(float) * (layer.q.size() + layer.k.size() + layer.v.size());
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
}
BENCHMARK(BM_TraceRead)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5)
    ->UseRealTime()
    ->ComputeStatistics("min", min_of);

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

// H2O's prefill column sums of one (layer, kv head) of the `bench` shape: every prompt row
// (4080) of the 4 query heads of the group, d = 128. FLOP/s counts the causal QK^T only,
// 2 d P (P + 1) / 2 per query head, as the target does (compare with BM_PeakFma*).
void BM_PrefillColumnSums(benchmark::State& state) {
  const ReplayFixture& f = fixture();
  const int64_t P = f.config.prompt_len;
  std::vector<int32_t> candidates(P);
  for (int64_t i = 0; i < P; ++i) candidates[i] = static_cast<int32_t>(i);
  std::vector<float> colsum;
  const PrefillSumsTask task{&f.layers[0], 0, 0, P, -1, candidates, &colsum};
  for (auto _ : state) {
    cpu_backend().prefill_column_sums(f.meta, std::span(&task, 1));
    benchmark::DoNotOptimize(colsum.data());
  }
  const double flop = 2.0 * f.meta.head_dim * static_cast<double>(P) * (P + 1) / 2 *
                      f.meta.group_size() * static_cast<double>(state.iterations());
  state.counters["FLOP/s"] = benchmark::Counter(flop, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_PrefillColumnSums)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ComputeStatistics("min", min_of);

// One measured step of one kv head's cache (`full`: n = 4096 cached rows of the `bench`
// shape, d = 128, 4 query heads): the backend's cache attention with every metric input.
// FLOP/s counts 2 d per (query, key) for the scores and 2 d for the weighted sum; bytes K and
// V once (what a step must stream when the cache is out of cache).
void BM_MeasuredStepAttention(benchmark::State& state) {
  const ReplayFixture& f = fixture();
  const size_t n = static_cast<size_t>(state.range(0));
  const int d = f.meta.head_dim, group = f.meta.group_size();
  HeadCache cache;
  cache.head_dim = d;
  for (size_t i = 0; i < n; ++i) {
    cache.append(static_cast<int32_t>(i), f.layers[0].key(0, static_cast<int>(i)),
                 f.layers[0].value(0, static_cast<int>(i)));
  }
  const std::vector<double> lse(group, 0.0);
  CacheAttention out;
  const CacheAttentionTask task{&f.layers[0], 0,   static_cast<int64_t>(n) - 1, &cache, lse.data(),
                                &out,         true};
  for (auto _ : state) {
    cpu_backend().cache_attention(f.meta, std::span(&task, 1));
    benchmark::DoNotOptimize(out.out_hat.data());
  }
  const double iterations = static_cast<double>(state.iterations());
  state.counters["FLOP/s"] =
      benchmark::Counter(4.0 * d * group * n * iterations, benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<int64_t>(iterations * 2 * n * d * sizeof(float)));
}
BENCHMARK(BM_MeasuredStepAttention)
    ->Arg(1024)
    ->Arg(4080)
    ->UseRealTime()
    ->ComputeStatistics("min", min_of);

// The weighted sums of the exact attention: 16 query rows (4 measured steps x a group of 4)
// over n value rows of d = 128, as one ragged block (weighted_sum_rows, arg 1) or step by step
// in groups of 4 (weighted_sum, arg 0). FLOP/s: 2 d per (query, value row).
void BM_WeightedSums(benchmark::State& state) {
  constexpr int kRows = 16, kDim = 128;
  constexpr size_t n = 4080;
  const auto probs = random_vector(kRows * n, 4);
  const auto values = random_vector(n * kDim, 5);
  std::vector<float> out(kRows * kDim);
  std::vector<size_t> lengths(kRows);
  for (int r = 0; r < kRows; ++r) lengths[r] = n - 3 + r / 4;  // steps t .. t + 3
  for (auto _ : state) {
    if (state.range(0) == 1) {
      weighted_sum_rows(probs.data(), n, kRows, lengths.data(), values.data(), kDim, out.data());
    } else {
      for (int r = 0; r < kRows; r += 4) {
        weighted_sum(probs.data() + r * n, 4, values.data(), lengths[r], kDim,
                     out.data() + r * kDim);
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * kDim * kRows * n * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_WeightedSums)->Arg(0)->Arg(1)->UseRealTime()->ComputeStatistics("min", min_of);

// The exact attention of one layer at its 16 measured steps (the `bench` shape: 32 query heads
// over 8 kv heads, d = 128, ~4080 keys), as the replay computes it once per unit: blocks of
// measured steps (32 query rows per kv head) score each key tile and weigh each value row
// once per block. FLOP/s counts 2 d per (query, key) for the scores and 2 d for the weighted
// sum; bytes K and V once per block (8 steps of a kv head's group), what a blocked pass must
// stream when the keys are out of cache. Compare with BM_PeakFma (FLOP) and BM_StreamRead.
void BM_ExactAttentionBlocked(benchmark::State& state) {
  const ReplayFixture& f = fixture();
  const int d = f.meta.head_dim;
  double flop = 0, bytes = 0;
  for (const int64_t t : f.measured) {
    flop += 4.0 * d * f.meta.num_q_heads * static_cast<double>(t + 1);
  }
  const double blocks =
      std::ceil(static_cast<double>(f.measured.size()) / std::max(1, 32 / f.meta.group_size()));
  bytes = blocks * f.meta.num_kv_heads * 2.0 * static_cast<double>(f.measured.back() + 1) * d *
          sizeof(float);
  for (auto _ : state) {
    ExactLayer ex = cpu_backend().exact_attention(f.meta, f.layers[0], f.measured);
    benchmark::DoNotOptimize(ex.out.data());
  }
  const double iterations = static_cast<double>(state.iterations());
  state.counters["FLOP/s"] = benchmark::Counter(flop * iterations, benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<int64_t>(bytes * iterations));
}
BENCHMARK(BM_ExactAttentionBlocked)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ComputeStatistics("min", min_of);

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
