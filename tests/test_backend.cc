// The attention backend seam (sim/base/attention_backend.h) and its CPU implementation: every
// output against a double-precision evaluation of its definition, batches against single
// calls, and the engine's use of the seam (everything it attends goes through it).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "record_testing.h"
#include "sim/base/attention.h"
#include "sim/cpu_backend.h"
#include "sim/engine.h"
#include "test_util.h"

namespace kvsim {
namespace {

// A cache over `positions` of one kv head whose rows are the trace's K/V plus noise of size
// `noise` (a stand-in for a quantized cache).
HeadCache noisy_cache(const LayerData& layer, int kv_head, const std::vector<int32_t>& positions,
                      float noise, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, noise);
  HeadCache cache;
  cache.head_dim = layer.head_dim;
  std::vector<float> k(layer.head_dim), v(layer.head_dim);
  for (int32_t p : positions) {
    const float* kr = layer.key(kv_head, p);
    const float* vr = layer.value(kv_head, p);
    for (int c = 0; c < layer.head_dim; ++c) {
      k[c] = kr[c] + dist(rng);
      v[c] = vr[c] + dist(rng);
    }
    cache.append(p, k.data(), v.data());
  }
  return cache;
}

double dot(const float* a, const float* b, int d) {
  double s = 0;
  for (int c = 0; c < d; ++c) s += static_cast<double>(a[c]) * b[c];
  return s;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  // memcmp of empty vectors' null data() is undefined behaviour (UBSan's nonnull check).
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

struct Fixture {
  SynthConfig config = synth_preset("tiny");
  TraceMeta meta = synth_meta(config);
  std::vector<LayerData> layers = synth_sequence(config, 0);
};

// Every field of a measured task against its definition, evaluated in double.
TEST(CpuBackend, CacheAttentionMatchesItsDefinition) {
  Fixture f;
  const LayerData& layer = f.layers[1];
  const int group = f.meta.group_size(), d = f.meta.head_dim;
  const int64_t t = f.config.tokens - 3;
  std::vector<int32_t> positions;
  for (int32_t p = 0; p <= t; p += 3) positions.push_back(p);  // a third of the tokens
  for (int kv_head = 0; kv_head < f.meta.num_kv_heads; ++kv_head) {
    const HeadCache cache = noisy_cache(layer, kv_head, positions, 0.05f, 7 + kv_head);
    const size_t n = cache.size();
    // The exact log-sum-exps of the step (the engine takes them from exact_attention()).
    std::vector<double> exact_lse(group);
    for (int j = 0; j < group; ++j) {
      std::vector<double> unused(d);
      exact_lse[j] = cpu_reference::attend(layer.query(kv_head * group + j, t),
                                           layer.key(kv_head, 0), layer.value(kv_head, 0), t + 1, d,
                                           f.meta.attn_scale, unused.data());
    }
    CacheAttention out;
    const CacheAttentionTask task{&layer, kv_head, t, &cache, exact_lse.data(), &out};
    cpu_backend().cache_attention(f.meta, std::span(&task, 1));
    ASSERT_EQ(out.probs.size(), group * n);
    for (int j = 0; j < group; ++j) {
      const float* q = layer.query(kv_head * group + j, t);
      std::vector<double> s(n), raw(n);
      double m = -INFINITY;
      for (size_t i = 0; i < n; ++i) {
        s[i] = f.meta.attn_scale * dot(q, cache.key_row(i), d);
        raw[i] = f.meta.attn_scale * dot(q, layer.key(kv_head, cache.positions[i]), d);
        m = std::max(m, s[i]);
      }
      double z = 0;
      for (size_t i = 0; i < n; ++i) z += std::exp(s[i] - m);
      const double lse_hat = m + std::log(z);
      EXPECT_NEAR(out.lse_hat[j], lse_hat, 1e-5 * std::max(1.0, std::abs(lse_hat)));
      std::vector<double> o(d, 0.0);
      double mass = 0, cross = 0;
      size_t top = 0;
      for (size_t i = 0; i < n; ++i) {
        const double p = std::exp(s[i] - lse_hat);
        EXPECT_NEAR(out.scores[j * n + i], s[i], 1e-5 * std::max(1.0, std::abs(s[i])));
        EXPECT_NEAR(out.probs[j * n + i], p, 1e-6);
        for (int c = 0; c < d; ++c) o[c] += p * cache.value_row(i)[c];
        const double pe = std::exp(raw[i] - exact_lse[j]);
        mass += pe;
        cross += pe * (raw[i] - s[i]);
        if (s[i] > s[top]) top = i;
      }
      for (int c = 0; c < d; ++c) EXPECT_NEAR(out.out_hat[j * d + c], o[c], 1e-5);
      EXPECT_NEAR(out.kept_mass[j], mass, 1e-5);
      EXPECT_GT(mass, 0.05);  // a third of the tokens: neither all nor nothing of the mass
      EXPECT_LT(mass, 0.999);
      EXPECT_NEAR(out.kept_cross[j], cross, 1e-5);
      EXPECT_EQ(out.top1[j], cache.positions[top]);
    }
  }
}

// A step that is not measured gets probabilities (for the stages) and nothing else.
TEST(CpuBackend, UnmeasuredTaskFillsOnlyTheDistribution) {
  Fixture f;
  const int64_t t = f.config.prompt_len + 2;
  const HeadCache cache = noisy_cache(f.layers[0], 0, testing::range(0, t + 1), 0.01f, 3);
  CacheAttention out;
  const CacheAttentionTask task{&f.layers[0], 0, t, &cache, nullptr, &out};
  cpu_backend().cache_attention(f.meta, std::span(&task, 1));
  const size_t n = cache.size();
  for (int j = 0; j < f.meta.group_size(); ++j) {
    const double sum =
        std::accumulate(out.probs.begin() + j * n, out.probs.begin() + (j + 1) * n, 0.0);
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
  EXPECT_TRUE(out.out_hat.empty());
  EXPECT_TRUE(out.kept_mass.empty());
  EXPECT_TRUE(out.top1.empty());
}

// Equal compressed scores: the lowest position wins, even when the rows are not in position
// order (a merging store may restore rows out of order).
TEST(CpuBackend, TopTokenTiesGoToTheLowestPosition) {
  TraceMeta meta = testing::hand_meta(2, 1, 1, {0}, 1.0);
  LayerData layer;
  layer.num_tokens = 8;
  layer.head_dim = 2;
  layer.q.assign(8 * 2, 1.0f);
  layer.k.assign(8 * 2, 0.0f);
  layer.v.assign(8 * 2, 0.0f);
  HeadCache cache;
  cache.head_dim = 2;
  const float big[2] = {1, 1}, small[2] = {0, 0.5f}, zero[2] = {0, 0};
  // Rows in the order 5, 2, 6: positions 5 and 2 share the largest score.
  cache.positions = {5, 2, 6};
  cache.keys = {big[0], big[1], big[0], big[1], small[0], small[1]};
  cache.values = {zero[0], zero[1], zero[0], zero[1], zero[0], zero[1]};
  std::vector<double> lse = {0.0};
  CacheAttention out;
  const CacheAttentionTask task{&layer, 0, 7, &cache, lse.data(), &out};
  cpu_backend().cache_attention(meta, std::span(&task, 1));
  EXPECT_EQ(out.top1[0], 2);
}

// A batch of tasks (several heads, layers and steps, measured or not) gives exactly what the
// same tasks give one at a time.
TEST(CpuBackend, BatchEqualsOneByOne) {
  Fixture f;
  const int group = f.meta.group_size();
  std::vector<HeadCache> caches;
  std::vector<std::vector<double>> lses;
  struct Req {
    int slot, kv_head;
    int64_t step;
    bool measured;
  };
  std::vector<Req> reqs;
  for (int slot = 0; slot < 2; ++slot) {
    for (int h = 0; h < f.meta.num_kv_heads; ++h) {
      const int64_t t = f.config.prompt_len + slot * 3 + h;
      caches.push_back(
          noisy_cache(f.layers[slot], h, testing::range(0, t + 1), 0.02f, slot * 8 + h));
      lses.emplace_back(group, 0.5 * (slot + 1));
      reqs.push_back({slot, h, t, (slot + h) % 2 == 0});
    }
  }
  std::vector<CacheAttention> batched(reqs.size()), single(reqs.size());
  std::vector<CacheAttentionTask> tasks;
  for (size_t r = 0; r < reqs.size(); ++r) {
    const double* lse = reqs[r].measured ? lses[r].data() : nullptr;
    tasks.push_back(
        {&f.layers[reqs[r].slot], reqs[r].kv_head, reqs[r].step, &caches[r], lse, &batched[r]});
  }
  cpu_backend().cache_attention(f.meta, tasks);
  for (size_t r = 0; r < reqs.size(); ++r) {
    CacheAttentionTask one = tasks[r];
    one.out = &single[r];
    cpu_backend().cache_attention(f.meta, std::span(&one, 1));
    EXPECT_TRUE(same_bits(batched[r].probs, single[r].probs)) << r;
    EXPECT_TRUE(same_bits(batched[r].lse_hat, single[r].lse_hat)) << r;
    EXPECT_TRUE(same_bits(batched[r].out_hat, single[r].out_hat)) << r;
    EXPECT_TRUE(same_bits(batched[r].kept_mass, single[r].kept_mass)) << r;
    EXPECT_TRUE(same_bits(batched[r].kept_cross, single[r].kept_cross)) << r;
    EXPECT_EQ(batched[r].top1, single[r].top1) << r;
    EXPECT_EQ(batched[r].out_hat.empty(), !reqs[r].measured) << r;
  }
}

// Prefill column sums against the definition: the softmax of each requested prompt row
// (causal, within the layer's window), summed per candidate column, in double.
TEST(CpuBackend, PrefillColumnSumsMatchTheirDefinition) {
  SynthConfig c = synth_preset("tiny");
  c.sliding_window = 16;
  c.sliding_every = 2;  // slot 0 has a 16-token window
  const TraceMeta meta = synth_meta(c);
  const auto layers = synth_sequence(c, 0);
  const int group = meta.group_size(), d = meta.head_dim;
  const int64_t P = c.prompt_len;
  for (int slot : {0, 1}) {
    const int window = meta.sliding_window[slot];
    for (int64_t rows : {int64_t{-1}, int64_t{5}}) {
      std::vector<int32_t> candidates;
      for (int32_t p = window ? static_cast<int32_t>(P - window) : 0; p < P; p += 2) {
        candidates.push_back(p);
      }
      std::vector<float> colsum;
      const PrefillSumsTask task{&layers[slot], 1, window, P, rows, candidates, &colsum};
      cpu_backend().prefill_column_sums(meta, std::span(&task, 1));
      ASSERT_EQ(colsum.size(), group * candidates.size());
      const int64_t first = rows < 0 ? 0 : P - rows;
      for (int j = 0; j < group; ++j) {
        std::vector<double> want(candidates.size(), 0.0);
        for (int64_t r = first; r < P; ++r) {
          const int64_t lo = window_start(window, r);
          const float* q = layers[slot].query(1 * group + j, static_cast<int>(r));
          std::vector<double> s(r - lo + 1);
          for (int64_t i = lo; i <= r; ++i) {
            s[i - lo] = meta.attn_scale * dot(q, layers[slot].key(1, static_cast<int>(i)), d);
          }
          const double m = *std::max_element(s.begin(), s.end());
          double z = 0;
          for (double x : s) z += std::exp(x - m);
          for (size_t ci = 0; ci < candidates.size(); ++ci) {
            const int64_t p = candidates[ci];
            if (p >= lo && p <= r) want[ci] += std::exp(s[p - lo] - m) / z;
          }
        }
        for (size_t ci = 0; ci < candidates.size(); ++ci) {
          EXPECT_NEAR(colsum[j * candidates.size() + ci], want[ci], 2e-5)
              << "slot " << slot << " rows " << rows << " j " << j << " candidate " << ci;
        }
      }
    }
  }
}

// Counts what the engine asks of its backend, and forwards to the CPU one.
class CountingBackend final : public AttentionBackend {
 public:
  std::string name() const override { return "counting"; }
  ExactLayer exact_attention(const TraceMeta& meta, const LayerData& layer,
                             std::span<const int64_t> measured) const override {
    ++exact_calls;
    return cpu_backend().exact_attention(meta, layer, measured);
  }
  void prefill_column_sums(const TraceMeta& meta,
                           std::span<const PrefillSumsTask> tasks) const override {
    prefill_tasks += static_cast<int>(tasks.size());
    cpu_backend().prefill_column_sums(meta, tasks);
  }
  void cache_attention(const TraceMeta& meta,
                       std::span<const CacheAttentionTask> tasks) const override {
    ++cache_calls;
    cache_tasks += static_cast<int>(tasks.size());
    cpu_backend().cache_attention(meta, tasks);
  }
  mutable std::atomic<int> exact_calls{0}, prefill_tasks{0}, cache_calls{0}, cache_tasks{0};
};

// The engine attends only through its backend: a counting backend sees one exact-attention
// call per (sequence, layer), one cache-attention call per measured step of each shard (all
// its kv heads in one batch), prefill sums only for the policies that ask -- and the results
// equal those of the default backend to the bit.
TEST(Engine, AttendsThroughItsBackend) {
  testing::TempDir dir;
  const SynthConfig c = synth_preset("tiny");
  ReplayOptions every = testing::every_step();
  every.threads = 1;
  const auto reference = testing::replay_synth(c, {"kivi:bits=2", "h2o"}, dir, every);
  CountingBackend counting;
  ReplayOptions through = every;
  through.backend = &counting;
  const auto runs = testing::replay_synth(c, {"kivi:bits=2", "h2o"}, dir, through);
  ASSERT_EQ(runs.size(), reference.size());
  for (size_t p = 0; p < runs.size(); ++p) {
    testing::expect_same_records(runs[p], reference[p]);
  }
  const int64_t decode = c.tokens - c.prompt_len;
  const int64_t layers = synth_meta(c).num_layers();
  const int64_t sequences = c.sequences;
  EXPECT_EQ(counting.exact_calls, layers * sequences);
  // kivi: measured steps only; h2o observes its own attention at every decode step.
  EXPECT_EQ(counting.cache_calls, 2 * layers * sequences * decode);
  EXPECT_EQ(counting.cache_tasks, 2 * layers * sequences * decode * synth_meta(c).num_kv_heads);
  EXPECT_GT(counting.prefill_tasks, 0);  // h2o's prefill column sums
}

}  // namespace
}  // namespace kvsim
