// What the engine keeps instead of recomputing (issue 11): the K/V error terms of an
// append-only store's rows (sim/kv_row_terms.h) and the exact scores that eviction-only caches
// share (ExactLayer::scores). Each against the computation it replaces, to the bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "record_testing.h"
#include "sim/base/attention.h"
#include "sim/cpu_backend.h"
#include "sim/engine.h"
#include "sim/kv_row_terms.h"
#include "test_util.h"

namespace kvsim {
namespace {

bool same_bits(const void* a, const void* b, size_t bytes) { return std::memcmp(a, b, bytes) == 0; }

// The CPU backend, with the exact scores dropped: every cache is scored from its own keys.
class UnsharedBackend final : public AttentionBackend {
 public:
  std::string name() const override { return "cpu-unshared"; }
  ExactLayer exact_attention(const TraceMeta& meta, const LayerData& layer,
                             std::span<const int64_t> measured) const override {
    ExactLayer ex = cpu_backend().exact_attention(meta, layer, measured);
    ex.scores.clear();
    return ex;
  }
  void prefill_column_sums(const TraceMeta& meta,
                           std::span<const PrefillSumsTask> tasks) const override {
    cpu_backend().prefill_column_sums(meta, tasks);
  }
  void cache_attention(const TraceMeta& meta,
                       std::span<const CacheAttentionTask> tasks) const override {
    cpu_backend().cache_attention(meta, tasks);
  }
};

// Sliding-window layers too (every other layer), so that the windows' first positions count.
SynthConfig windowed_tiny() {
  SynthConfig c = synth_preset("tiny");
  c.sliding_window = 40;
  c.sliding_every = 2;
  return c;
}

TEST(SharedScoring, ExactLayerKeepsTheScoresOfEveryMeasuredStep) {
  const SynthConfig c = windowed_tiny();
  const TraceMeta meta = synth_meta(c);
  const std::vector<LayerData> layers = synth_sequence(c, 0);
  const std::vector<int64_t> measured = MeasureRule::parse("all").steps(c.prompt_len, c.tokens);
  const int group = meta.group_size(), d = meta.head_dim;
  for (const LayerData& layer : layers) {
    const ExactLayer ex = cpu_backend().exact_attention(meta, layer, measured);
    ASSERT_EQ(ex.score_offset.size(), measured.size());
    const int window = meta.sliding_window[layer.slot];
    for (size_t m = 0; m < measured.size(); ++m) {
      const int64_t t = measured[m], first = window_start(window, t);
      ASSERT_EQ(ex.score_first[m], first);
      const size_t n = static_cast<size_t>(t - first + 1);
      for (int h = 0; h < meta.num_kv_heads; ++h) {
        // score_rows over the window's keys, the kernel a cache is scored with.
        std::vector<float> q(group * d), want(group * n);
        for (int j = 0; j < group; ++j) {
          std::memcpy(q.data() + j * d, layer.query(h * group + j, static_cast<int>(t)),
                      sizeof(float) * d);
        }
        score_rows(q.data(), group, layer.key(h, static_cast<int>(first)), n, d,
                   static_cast<float>(meta.attn_scale), want.data());
        const float* got = ex.scores.data() + ex.score_offset[m] + h * group * n;
        EXPECT_TRUE(same_bits(got, want.data(), sizeof(float) * want.size()))
            << "slot " << layer.slot << " step " << t << " kv head " << h;
      }
    }
  }
}

// Eviction-only policies (and `full`) through shared scoring against the same replay scoring
// every cache itself: bit-identical records.
TEST(SharedScoring, RecordsEqualScoringEachCache) {
  testing::TempDir dir;
  const std::vector<std::string> specs = {
      "full",   "snapkv", "h2o",         "streamingllm:window=24",
      "l2norm", "oracle", "kivi:bits=2", "h2o+kivi:bits=2"};
  ReplayOptions shared = testing::every_step();
  shared.threads = 1;
  const auto with = testing::replay_synth(windowed_tiny(), specs, dir, shared);
  UnsharedBackend unshared_backend;
  ReplayOptions unshared = shared;
  unshared.backend = &unshared_backend;
  const auto without = testing::replay_synth(windowed_tiny(), specs, dir, unshared);
  ASSERT_EQ(with.size(), without.size());
  for (size_t p = 0; p < with.size(); ++p) {
    SCOPED_TRACE(specs[p]);
    testing::expect_same_records(with[p], without[p]);
  }
}

// Oracle configurations replayed together share the unit's exact attention rows
// (AttentionRowMemo): their records equal those of each replayed alone.
TEST(SharedScoring, OracleConfigsShareTheirRowsToTheBit) {
  testing::TempDir dir;
  const std::vector<std::string> specs = {"oracle:ratio=0.2", "oracle:ratio=0.1,schedule=cap",
                                          "oracle:budget=12,schedule=cap"};
  ReplayOptions options = testing::every_step();
  options.threads = 1;
  const auto together = testing::replay_synth(windowed_tiny(), specs, dir, options);
  ASSERT_EQ(together.size(), specs.size());
  for (size_t p = 0; p < specs.size(); ++p) {
    SCOPED_TRACE(specs[p]);
    const auto alone = testing::replay_synth(windowed_tiny(), {specs[p]}, dir, options);
    testing::expect_same_records(together[p], alone[0]);
  }
}

// The ledger's sums against the terms of every row recomputed, after appends and removals,
// with a prefix of the rows final (kept) and the rest recomputed.
TEST(RowTermsLedger, SumsEqualTheRowsRecomputed) {
  const SynthConfig c = synth_preset("tiny");
  const std::vector<LayerData> layers = synth_sequence(c, 0);
  const LayerData& raw = layers[1];
  const int d = raw.head_dim, kv_head = 1;
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0.f, 0.05f);
  HeadCache cache;
  cache.head_dim = d;
  RowTermsLedger ledger;
  std::vector<float> k(d), v(d);
  for (int32_t pos = 0; pos < c.tokens; ++pos) {
    // Keys exact at every third position, values at every fifth; the others perturbed.
    for (int ch = 0; ch < d; ++ch) {
      k[ch] = raw.key(kv_head, pos)[ch] + (pos % 3 == 0 ? 0.f : noise(rng));
      v[ch] = raw.value(kv_head, pos)[ch] + (pos % 5 == 0 ? 0.f : noise(rng));
    }
    cache.append(pos, k.data(), v.data());
    if (pos % 7 == 6) {  // drop two older rows
      const std::vector<int32_t> drop = {cache.positions[0], cache.positions[cache.size() / 2]};
      cache.remove(drop);
      ledger.removed(drop);
    }
    // All but the newest 3 rows final (a residual of 3), the whole cache every 10th step.
    const size_t final_rows =
        pos % 10 == 9 ? cache.size()
                      : std::max(ledger.size(), cache.size() - std::min<size_t>(3, cache.size()));
    ledger.extend(cache, final_rows, raw, kv_head);
    KvErrorSums want;
    bool keys_exact = true, values_exact = true;
    for (size_t i = 0; i < cache.size(); ++i) {
      want.add(row_terms(cache, i, raw, kv_head));
      keys_exact = keys_exact && cache.positions[i] % 3 == 0;
      values_exact = values_exact && cache.positions[i] % 5 == 0;
    }
    const KvErrorSums got = ledger.sums(cache, raw, kv_head);
    EXPECT_TRUE(same_bits(&got, &want, sizeof(got))) << "after token " << pos;
    EXPECT_EQ(ledger.keys_exact(cache, raw, kv_head), keys_exact) << "after token " << pos;
    EXPECT_EQ(ledger.values_exact(cache, raw, kv_head), values_exact) << "after token " << pos;
  }
}

// Every store's final rows (StoreStage::final_rows()) stay as they were through a whole shard:
// the prompt, then a token per step with an eviction each step.
TEST(RowTermsLedger, StoresNeverChangeTheirFinalRows) {
  testing::HandShard hs(2, 1, 64, 96, 40);
  std::mt19937 rng(9);
  std::normal_distribution<float> dist(0.f, 1.f);
  for (auto* plane : {&hs.layer.q, &hs.layer.k, &hs.layer.v}) {
    for (float& x : *plane) x = dist(rng);
  }
  std::vector<std::string> with_final_rows;
  for (const PolicyInfo* info : PolicyRegistry::instance().all()) {
    if (info->kind != StageKind::kQuantize || info->prepare) continue;
    SCOPED_TRACE(info->name);
    // KIVI with residuals short enough that rows leave them within the shard.
    const std::string spec = info->name == "kivi" ? "kivi:group=8,residual=16" : info->name;
    Pipeline pipe = Pipeline::create(PolicySpec::parse(spec), hs.ctx, {});
    HeadCache cache, final_part;  // final_part: the rows declared final, as they were
    cache.head_dim = final_part.head_dim = 64;
    bool declared = false;
    auto check_and_declare = [&] {
      ASSERT_LE(final_part.size(), cache.size());
      for (size_t i = 0; i < final_part.size(); ++i) {
        ASSERT_EQ(cache.positions[i], final_part.positions[i]);
        ASSERT_TRUE(same_bits(cache.key_row(i), final_part.key_row(i), sizeof(float) * 64));
        ASSERT_TRUE(same_bits(cache.value_row(i), final_part.value_row(i), sizeof(float) * 64));
      }
      const size_t final_rows = pipe.store->final_rows(0, 0, cache);
      ASSERT_GE(final_rows, final_part.size());
      ASSERT_LE(final_rows, cache.size());
      declared = declared || final_rows > 0;
      for (size_t i = final_part.size(); i < final_rows; ++i) {
        final_part.append(cache.positions[i], cache.key_row(i), cache.value_row(i));
      }
    };
    pipe.store->insert(0, 0, cache, testing::range(0, 40), hs.layer, /*prefill=*/true);
    check_and_declare();
    // transformers' QuantizedCache keeps every token (it refuses to follow an evict stage).
    const bool evicts = info->name != "hf_quantized";
    for (int32_t t = 40; t < 96; ++t) {
      if (evicts) {
        const std::vector<int32_t> drop = {cache.positions[(t * 7) % cache.size()]};
        cache.remove(drop);
        pipe.store->removed(0, 0, cache, drop);
        if (final_part.find(drop[0]) >= 0) final_part.remove(drop);
      }
      pipe.store->insert(0, 0, cache, std::span<const int32_t>(&t, 1), hs.layer, false);
      check_and_declare();
    }
    if (declared) with_final_rows.push_back(info->name);
  }
  // `full` and `kivi` declare final rows (so the test checks something).
  EXPECT_NE(std::find(with_final_rows.begin(), with_final_rows.end(), "full"),
            with_final_rows.end());
  EXPECT_NE(std::find(with_final_rows.begin(), with_final_rows.end(), "kivi"),
            with_final_rows.end());
}

}  // namespace
}  // namespace kvsim
