// The GPU attention backend (gpu/gpu_backend.h) without a GPU: its host bookkeeping -- cache
// deltas, the ragged layout, the workspace, the layer and cache copies and their eviction --
// checked on its own and through the host executor, whose results must equal the CPU
// backend's to the bit (any bookkeeping error shows as a difference). With a GPU, the CUDA
// backend against the CPU one (docs/gpu.md tolerances; skipped without a device).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "gpu/backend_plan.h"
#include "gpu/device.h"
#include "gpu/gpu_backend.h"
#include "record_testing.h"
#include "sim/cpu_backend.h"
#include "sim/engine.h"
#include "test_util.h"
#include "trace/trace.h"

namespace kvsim {
namespace {

using gpu::CacheDeltaPlan;

// A cache over `positions` of one kv head: the trace's K/V with a small deterministic
// perturbation (a stand-in for a quantized cache).
HeadCache perturbed_cache(const LayerData& layer, int kv_head,
                          const std::vector<int32_t>& positions) {
  HeadCache cache;
  cache.head_dim = layer.head_dim;
  std::vector<float> k(layer.head_dim), v(layer.head_dim);
  for (int32_t p : positions) {
    for (int c = 0; c < layer.head_dim; ++c) {
      k[c] = layer.key(kv_head, p)[c] + 0.05f * std::sin(0.7f * p + c);
      v[c] = layer.value(kv_head, p)[c] + 0.05f * std::cos(1.3f * p + c);
    }
    cache.append(p, k.data(), v.data());
  }
  return cache;
}

bool same_cache(const HeadCache& a, const HeadCache& b) {
  return a.head_dim == b.head_dim && a.positions == b.positions && a.keys.size() == b.keys.size() &&
         a.values.size() == b.values.size() &&
         (a.keys.empty() ||
          std::memcmp(a.keys.data(), b.keys.data(), sizeof(float) * a.keys.size()) == 0) &&
         (a.values.empty() ||
          std::memcmp(a.values.data(), b.values.data(), sizeof(float) * a.values.size()) == 0);
}

// Applies `plan` to a copy of `before` with the staged rows of `now`: must give `now`.
HeadCache replayed(const CacheDeltaPlan& plan, const HeadCache& before, const HeadCache& now) {
  std::vector<float> k, v;
  gpu::gather_staged_rows(plan, now, k, v);
  HeadCache image = before;
  gpu::apply_cache_delta(plan, now.positions, k, v, image);
  return image;
}

std::vector<float> random_row(std::mt19937& rng, int d) {
  std::normal_distribution<float> dist;
  std::vector<float> row(d);
  for (float& x : row) x = dist(rng);
  return row;
}

// A cache of random rows at positions 0..count-1.
HeadCache random_cache(std::mt19937& rng, int d, int count) {
  HeadCache cache;
  cache.head_dim = d;
  for (int p = 0; p < count; ++p)
    cache.append(p, random_row(rng, d).data(), random_row(rng, d).data());
  return cache;
}

TEST(GpuCacheDelta, AppendsUploadOnlyTheNewRowsInPlace) {
  std::mt19937 rng(1);
  const int d = 8;
  const HeadCache before = random_cache(rng, d, 5);
  HeadCache now = before;
  now.append(7, random_row(rng, d).data(), random_row(rng, d).data());
  now.append(9, random_row(rng, d).data(), random_row(rng, d).data());
  const CacheDeltaPlan plan = gpu::plan_cache_delta(before, now);
  EXPECT_EQ(plan.staged, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(plan.kept_prefix, 5);
  EXPECT_TRUE(plan.in_place());
  EXPECT_FALSE(plan.unchanged());
  EXPECT_TRUE(same_cache(replayed(plan, before, now), now));
  EXPECT_TRUE(gpu::plan_cache_delta(now, now).unchanged());
}

TEST(GpuCacheDelta, RemovalsMoveRowsWithoutUploads) {
  std::mt19937 rng(2);
  const int d = 4;
  const HeadCache before = random_cache(rng, d, 6);
  HeadCache now = before;
  const std::vector<int32_t> gone = {1, 4};
  now.remove(gone);
  const CacheDeltaPlan plan = gpu::plan_cache_delta(before, now);
  EXPECT_TRUE(plan.staged.empty());
  EXPECT_EQ(plan.source, (std::vector<int32_t>{0, 2, 3, 5}));
  EXPECT_EQ(plan.kept_prefix, 1);
  EXPECT_FALSE(plan.in_place());
  EXPECT_TRUE(same_cache(replayed(plan, before, now), now));
}

TEST(GpuCacheDelta, RewrittenRowsAreStagedAndSurviveAnyEditSequence) {
  std::mt19937 rng(3);
  const int d = 16;
  HeadCache before;
  before.head_dim = d;
  int32_t next = 0;
  for (int step = 0; step < 300; ++step) {
    HeadCache now = before;
    int64_t changed = 0;  // rows whose content the edits made new
    const int op = static_cast<int>(rng() % 4);
    if (op == 0 || now.size() < 3) {  // appends
      const int count = 1 + static_cast<int>(rng() % 3);
      for (int i = 0; i < count; ++i)
        now.append(next++, random_row(rng, d).data(), random_row(rng, d).data());
      changed = count;
    } else if (op == 1) {  // removals
      std::vector<int32_t> gone;
      for (size_t i = 0; i < now.size(); ++i) {
        if (rng() % 4 == 0) gone.push_back(now.positions[i]);
      }
      now.remove(gone);
    } else if (op == 2) {  // a rewrite (a merge or a requantization)
      const size_t row = rng() % now.size();
      const auto k = random_row(rng, d);
      std::memcpy(now.key_row(row), k.data(), sizeof(float) * d);
      changed = 1;
    } else {  // a rewrite of one component of a value by its own bits: no change at all
      const size_t row = rng() % now.size();
      float x = now.value_row(row)[0];
      std::memcpy(now.value_row(row), &x, sizeof x);
    }
    const CacheDeltaPlan plan = gpu::plan_cache_delta(before, now);
    ASSERT_TRUE(same_cache(replayed(plan, before, now), now)) << "step " << step;
    EXPECT_EQ(static_cast<int64_t>(plan.staged.size()), changed) << "step " << step;
    before = now;
  }
}

TEST(GpuRaggedLayout, IndptrSlotsAndWorkspaceFollowTheTasks) {
  const int group = 3, d = 8;
  LayerData layer;
  std::vector<HeadCache> caches(4);
  std::vector<CacheAttention> outs(4);
  const double lse[3] = {0, 0, 0};
  std::vector<CacheAttentionTask> tasks;
  const size_t sizes[4] = {5, 0, 7, 2};
  for (int t = 0; t < 4; ++t) {
    caches[t].head_dim = d;
    std::vector<float> row(d, 1.f);
    for (size_t i = 0; i < sizes[t]; ++i)
      caches[t].append(static_cast<int32_t>(i), row.data(), row.data());
    tasks.push_back({&layer, 0, 10, &caches[t], t % 2 == 0 ? lse : nullptr, &outs[t]});
  }
  const gpu::RaggedLayout layout = gpu::build_ragged_layout(group, d, tasks);
  EXPECT_EQ(layout.row_indptr, (std::vector<int64_t>{0, 5, 5, 12, 14}));
  EXPECT_EQ(layout.measured_slot, (std::vector<int32_t>{0, -1, 1, -1}));
  EXPECT_EQ(layout.num_measured, 2);
  const gpu::WorkspaceSizes sizes_of = gpu::workspace_sizes(layout, 40);
  EXPECT_EQ(sizes_of.scores, 14 * group);
  EXPECT_EQ(sizes_of.lse_hat, 4 * group);
  EXPECT_EQ(sizes_of.out_hat, 2 * group * d);
  EXPECT_EQ(sizes_of.descriptors, 4 * 40);
  // Offsets: aligned, in order, each array fits before the next.
  const auto o = sizes_of.offsets();
  const size_t starts[] = {o.descriptors, o.exact_lse, o.scores,     o.probs, o.lse_hat,
                           o.out_hat,     o.kept_mass, o.kept_cross, o.top1,  o.end};
  const size_t bytes[] = {160, 8 * 6, 4 * 42, 4 * 42, 8 * 12, 4 * 48, 4 * 6, 4 * 6, 4 * 6};
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(starts[i] % 256, 0u);
    EXPECT_GE(starts[i + 1], starts[i] + bytes[i]) << i;
  }
  // The scatter: each task gets its own slice back.
  gpu::RaggedOutputs outputs;
  outputs.resize_for(layout);
  for (size_t i = 0; i < outputs.scores.size(); ++i) outputs.scores[i] = static_cast<float>(i);
  for (size_t i = 0; i < outputs.top1.size(); ++i) outputs.top1[i] = static_cast<int32_t>(i);
  gpu::scatter_outputs(layout, outputs, tasks);
  EXPECT_EQ(outs[2].scores.size(), 7u * group);
  EXPECT_EQ(outs[2].scores.front(), 5.f * group);
  EXPECT_TRUE(outs[1].scores.empty());
  EXPECT_EQ(outs[2].top1, (std::vector<int32_t>{3, 4, 5}));
}

// A file of the repository: under the source tree this binary was built from, or (binaries
// moved to another machine, gpu/bench/device_check.sh) under the current directory.
std::string repo_file(const std::string& relative) {
  const std::string built = std::string(KVSIM_SOURCE_DIR) + "/" + relative;
  return std::filesystem::exists(built) ? built : relative;
}

// The quickstart's policies (experiments/quickstart/policies.cfg).
std::vector<PolicySpec> quickstart_policies() {
  std::ifstream in(repo_file("experiments/quickstart/policies.cfg"));
  std::vector<PolicySpec> specs;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("policy = ", 0) == 0) specs.push_back(PolicySpec::parse(line.substr(9)));
  }
  return specs;
}

std::string embedded_trace() { return repo_file("trace/data/smollm2_default.h5"); }

// Replays `specs` on the embedded trace through `backend` and expects the CPU backend's
// records, bit for bit.
void expect_cpu_records(const std::vector<PolicySpec>& specs, const AttentionBackend& backend) {
  TraceReader trace(embedded_trace());
  ReplayOptions options;
  options.threads = 2;         // two threads share the backend
  options.sequences = {0, 2};  // two of three: each thread replays units of its own
  const auto expected = replay(trace, specs, options);
  options.backend = &backend;
  const auto runs = replay(trace, specs, options);
  ASSERT_EQ(runs.size(), expected.size());
  for (size_t p = 0; p < runs.size(); ++p) {
    SCOPED_TRACE(runs[p].spec);
    testing::expect_same_records(runs[p], expected[p]);
  }
}

// Every quickstart policy on the embedded trace through the host reference of the GPU backend:
// the CPU backend's records, with far fewer rows uploaded than attended (deltas only).
TEST(GpuHostReference, QuickstartBitIdenticalToTheCpuBackend) {
  const auto specs = quickstart_policies();
  ASSERT_GE(specs.size(), 20u);
  const auto backend = gpu::make_host_reference_backend(cpu_backend());
  expect_cpu_records(specs, *backend);
  const gpu::BackendStats stats = backend->stats();
  EXPECT_GT(stats.layer_uploads, 0);
  EXPECT_EQ(stats.evictions, 0);
  EXPECT_LT(stats.cache_rows_uploaded, stats.cache_rows_attended / 4);
}

// A budget far below one unit's copies: copies are dropped and uploaded again all the time,
// and results do not change (the policies that observe attention, rewrite rows and use
// prefill sums).
TEST(GpuHostReference, EvictionUnderATightBudgetKeepsResults) {
  std::vector<PolicySpec> specs;
  for (const char* s : {"h2o:heavy=0.125,recent=0.125+kivi:bits=2,residual=32", "minicache",
                        "snapkv:ratio=0.25+skvq:group=32,window=32"}) {
    specs.push_back(PolicySpec::parse(s));
  }
  const auto backend = gpu::make_host_reference_backend(cpu_backend(), size_t{64} << 10);
  expect_cpu_records(specs, *backend);
  EXPECT_GT(backend->stats().evictions, 0);
}

// The `full` policy keeps every token: each decode step appends one row per cache, so the
// deltas upload exactly the rows of the final caches (every row once) when nothing is evicted.
TEST(GpuHostReference, FullCacheUploadsEveryRowOnce) {
  testing::TempDir dir;
  const SynthConfig c = synth_preset("tiny");
  const auto backend = gpu::make_host_reference_backend(cpu_backend());
  ReplayOptions options = testing::every_step();
  options.backend = backend.get();
  const auto runs = testing::replay_synth(c, {"full"}, dir, options);
  const TraceMeta meta = synth_meta(c);
  const int64_t caches = meta.num_layers() * meta.num_kv_heads * c.sequences;
  const gpu::BackendStats stats = backend->stats();
  EXPECT_EQ(stats.cache_rows_uploaded, caches * c.tokens);
  // A shard's caches may reuse the addresses of a finished shard's: the copy is reused too.
  EXPECT_LE(stats.cache_images, caches);
  EXPECT_EQ(stats.layer_uploads, meta.num_layers() * c.sequences);
  // Attended rows: at step t the cache holds t + 1 rows.
  int64_t attended = 0;
  for (int64_t t = c.prompt_len; t < c.tokens; ++t) attended += t + 1;
  EXPECT_EQ(stats.cache_rows_attended, attended * caches);
}

// A cache object that is reused for other contents (as a new cache may take a freed one's
// address), and a layer whose contents change at the same address before its exact_attention
// call: results follow the contents.
TEST(GpuHostReference, CopiesFollowContentsAtTheSameAddress) {
  const SynthConfig c = synth_preset("tiny");
  const TraceMeta meta = synth_meta(c);
  std::vector<LayerData> layers = synth_sequence(c, 0);
  const auto backend = gpu::make_host_reference_backend(cpu_backend());
  const std::vector<int64_t> measured = {c.prompt_len, c.tokens - 1};
  LayerData layer = layers[0];
  const ExactLayer first = backend->exact_attention(meta, layer, measured);
  layer.k = layers[1].k;  // same object, other keys (assigned in place: same buffer)
  const ExactLayer second = backend->exact_attention(meta, layer, measured);
  const ExactLayer expected = cpu_backend().exact_attention(meta, layer, measured);
  EXPECT_EQ(second.lse, expected.lse);
  EXPECT_NE(first.lse, second.lse);

  HeadCache cache;
  cache.head_dim = meta.head_dim;
  CacheAttention got, want;
  for (int round = 0; round < 3; ++round) {
    cache.positions.clear();
    cache.keys.clear();
    cache.values.clear();
    for (int32_t p = round; p < c.prompt_len; p += 1 + round) {
      cache.append(p, layers[round].key(0, p), layers[round].value(0, p));
    }
    std::vector<double> lse(meta.group_size(), 1.0);
    CacheAttentionTask task{&layer, 0, c.prompt_len, &cache, lse.data(), &got};
    backend->cache_attention(meta, std::span(&task, 1));
    task.out = &want;
    cpu_backend().cache_attention(meta, std::span(&task, 1));
    EXPECT_EQ(got.scores, want.scores) << round;
    EXPECT_EQ(got.out_hat, want.out_hat) << round;
    EXPECT_EQ(got.top1, want.top1) << round;
  }
}

// --- the CUDA backend against the CPU backend (skipped without a GPU) ----------------------
//
// Tolerances (docs/gpu.md, "The CUDA backend"): the kernels compute the same float scores
// (dot products of head_dim terms summed in another order), exponentials with CUDA's expf and
// softmax sums in double; so scores agree to ~1e-6 relative, probabilities and kept mass to a
// few 1e-7 absolute, outputs to ~1e-6 of the value scale. The bounds below leave a factor ~10.

struct DeviceFixture {
  SynthConfig config;
  TraceMeta meta;
  std::vector<LayerData> layers;
  DeviceFixture() {
    config = synth_preset("tiny");  // 96 tokens, prompt 64
    config.model_layers = 2;
    config.head_dim = 64;  // a head_dim with kernels
    config.sliding_window = 24;
    config.sliding_every = 2;  // layer 0 local (window 24), layer 1 global
    meta = synth_meta(config);
    layers = synth_sequence(config, 0);
  }
};

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double atol,
                  double rtol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::abs(static_cast<double>(got[i]) - want[i]), atol + rtol * std::abs(want[i]))
        << what << " [" << i << "]: gpu " << got[i] << " cpu " << want[i];
  }
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double atol,
                  double rtol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {
      EXPECT_EQ(got[i], want[i]) << what;
      continue;
    }
    ASSERT_LE(std::abs(got[i] - want[i]), atol + rtol * std::abs(want[i]))
        << what << " [" << i << "]: gpu " << got[i] << " cpu " << want[i];
  }
}

#define KVSIM_REQUIRE_GPU() \
  if (!gpu::cuda_device_available()) GTEST_SKIP() << "no CUDA device: " << gpu::device_description()

TEST(CudaBackend, ExactAttentionMatchesTheCpuBackend) {
  KVSIM_REQUIRE_GPU();
  const DeviceFixture f;
  const auto backend = gpu::make_cuda_backend(0);
  const std::vector<int64_t> measured = {f.config.prompt_len, 80, f.config.tokens - 1};
  for (const LayerData& layer : f.layers) {
    const ExactLayer got = backend->exact_attention(f.meta, layer, measured);
    const ExactLayer want = cpu_backend().exact_attention(f.meta, layer, measured);
    expect_close(got.out, want.out, 1e-5, 1e-4, "out");
    expect_close(got.lse, want.lse, 1e-5, 1e-5, "lse");
    EXPECT_EQ(got.top1, want.top1);
    EXPECT_EQ(got.slot, want.slot);
  }
}

// Caches with gaps and noise (a compressed cache), an empty one, measured and unmeasured tasks
// of both layers in one call; then the same caches edited (removals, a rewrite, appends) so
// that the device copies are updated by deltas.
TEST(CudaBackend, CacheAttentionMatchesTheCpuBackend) {
  KVSIM_REQUIRE_GPU();
  const DeviceFixture f;
  const auto backend = gpu::make_cuda_backend(0);
  const int group = f.meta.group_size();
  std::vector<HeadCache> caches;
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 2; ++h) {
      std::vector<int32_t> positions;
      for (int32_t p = l + h; p <= f.config.prompt_len; p += 1 + l + h) positions.push_back(p);
      caches.push_back(perturbed_cache(f.layers[l], h, positions));
    }
  }
  caches.push_back(HeadCache{});  // empty
  caches.back().head_dim = f.meta.head_dim;
  std::vector<double> lse(group, 2.0);
  for (int round = 0; round < 3; ++round) {
    std::vector<CacheAttention> got(caches.size()), want(caches.size());
    std::vector<CacheAttentionTask> tasks;
    for (size_t c = 0; c < caches.size(); ++c) {
      const int l = c < 4 ? static_cast<int>(c) / 2 : 0;
      tasks.push_back({&f.layers[l], static_cast<int>(c % 2), f.config.prompt_len + round,
                       &caches[c], c % 3 == 1 ? nullptr : lse.data(), &got[c]});
    }
    backend->cache_attention(f.meta, tasks);
    for (size_t c = 0; c < tasks.size(); ++c) tasks[c].out = &want[c];
    cpu_backend().cache_attention(f.meta, tasks);
    for (size_t c = 0; c < caches.size(); ++c) {
      SCOPED_TRACE("round " + std::to_string(round) + " cache " + std::to_string(c));
      expect_close(got[c].scores, want[c].scores, 1e-5, 1e-5, "scores");
      expect_close(got[c].probs, want[c].probs, 1e-6, 1e-4, "probs");
      expect_close(got[c].lse_hat, want[c].lse_hat, 1e-5, 1e-5, "lse_hat");
      expect_close(got[c].out_hat, want[c].out_hat, 1e-5, 1e-4, "out_hat");
      expect_close(got[c].kept_mass, want[c].kept_mass, 1e-6, 1e-4, "kept_mass");
      expect_close(got[c].kept_cross, want[c].kept_cross, 1e-6, 1e-4, "kept_cross");
      EXPECT_EQ(got[c].top1, want[c].top1);
    }
    // Edits for the next round: a removal, a rewritten row, an appended row.
    for (size_t c = 0; c + 1 < caches.size(); ++c) {
      HeadCache& cache = caches[c];
      const std::vector<int32_t> gone = {cache.positions[cache.size() / 2]};
      cache.remove(gone);
      cache.key_row(0)[0] += 0.5f;
      const int l = c < 4 ? static_cast<int>(c) / 2 : 0;
      const int32_t next = f.config.prompt_len + 1 + round;
      cache.append(next, f.layers[l].key(static_cast<int>(c % 2), next),
                   f.layers[l].value(static_cast<int>(c % 2), next));
    }
  }
  EXPECT_GT(backend->stats().cache_rows_uploaded, 0);
}

TEST(CudaBackend, PrefillColumnSumsMatchTheCpuBackend) {
  KVSIM_REQUIRE_GPU();
  const DeviceFixture f;
  const auto backend = gpu::make_cuda_backend(0);
  std::vector<int32_t> all, some;
  for (int32_t p = 0; p < f.config.prompt_len; ++p) {
    all.push_back(p);
    if (p % 7 == 3) some.push_back(p);
  }
  std::vector<std::vector<float>> got(4), want(4);
  std::vector<PrefillSumsTask> tasks = {
      {&f.layers[0], 0, f.meta.sliding_window[0], f.config.prompt_len, 32, all, &got[0]},
      {&f.layers[1], 1, 0, f.config.prompt_len, -1, some, &got[1]},
      {&f.layers[1], 0, 0, f.config.prompt_len, 1, all, &got[2]},
      {&f.layers[0], 1, 0, f.config.prompt_len, 16, {}, &got[3]},
  };
  ASSERT_GT(f.meta.sliding_window[0], 0);
  backend->prefill_column_sums(f.meta, tasks);
  for (size_t t = 0; t < tasks.size(); ++t) tasks[t].colsum = &want[t];
  cpu_backend().prefill_column_sums(f.meta, tasks);
  for (size_t t = 0; t < tasks.size(); ++t) {
    SCOPED_TRACE(t);
    expect_close(got[t], want[t], 1e-5, 1e-4, "colsum");
  }
}

TEST(GpuBackend, UnavailableWithoutADevice) {
  if (gpu::cuda_device_available()) GTEST_SKIP() << "a GPU is visible";
  EXPECT_THROW(gpu::make_cuda_backend(0), BackendUnavailable);
}

}  // namespace
}  // namespace kvsim
