// TOVA (policies/tova.cc): a hand-derived worked example at layer and head
// granularity, the kept counts and memory to the bit on a replay, composition
// with a quantizer, and the paper's observation that the first token is
// practically never dropped.
#include <gtest/gtest.h>

#include <map>

#include "evict_testing.h"
#include "sim/base/errors.h"
#include "sim/sweep.h"

namespace kvsim::testing {
namespace {
using Rows = std::vector<float>;

// 4 query heads over 2 kv heads (group 2), prompt 6, N = 3. Row P-1 per query head:
//   q0 .1 .4 .1 .1 .1 .2    q1 .3  0 .2 .1 .2 .2     (kv head 0)
//   q2 .5  0 .1 .2  0 .2    q3  0 .1 .1 .5 .1 .2     (kv head 1)
// Layer sums .9 .5 .5 .9 .4 .8: both heads keep 0, 3, 5. Group sums: head 0
// .4 .4 .3 .2 .3 .4 keeps 0, 1, 5; head 1 .5 .1 .2 .7 .1 .4 keeps 0, 3, 5.
const std::vector<float> kRow0 = {.1f, .4f, .1f, .1f, .1f, .2f, .3f, 0, .2f, .1f, .2f, .2f};
const std::vector<float> kRow1 = {.5f, 0, .1f, .2f, 0, .2f, 0, .1f, .1f, .5f, .1f, .2f};

struct Worked : HandStage {
  explicit Worked(const std::string& spec) : HandStage(4, 2, 2, 8, 6) { build(spec); }
  // Prefill as the engine runs it: every head observes, then selects.
  std::vector<Positions> prefill() {
    const Positions prompt = range(0, 6);
    stage().observe_prefill(0, 0, prompt, kRow0);
    stage().observe_prefill(0, 1, prompt, kRow1);
    return {select(stage(), s.layer, 5, true, prompt, 0),
            select(stage(), s.layer, 5, true, prompt, 1)};
  }
};

TEST(Tova, WorkedExampleLayerMean) {
  Worked w("tova:budget=3");
  EXPECT_EQ(w.stage().prefill_attention_rows(), 1);  // the last prompt row
  EXPECT_TRUE(w.stage().needs_decode_attention());
  EXPECT_EQ(w.prefill(), (std::vector<Positions>{{1, 2, 4}, {1, 2, 4}}));
  // Step 6 arrives: N = 3 older entries, nothing to trim; its query sees 4.
  const Positions cache = {0, 3, 5, 6};
  EXPECT_EQ(select(w.stage(), w.s.layer, 6, false, cache, 0), Positions{});
  EXPECT_EQ(select(w.stage(), w.s.layer, 6, false, cache, 1), Positions{});
  // Step 6's query over {0, 3, 5, 6}; layer sums 1.0 .6 .8 1.6: step 7 drops 3.
  w.stage().observe(0, 0, 6, cache, Rows{.1f, .2f, .3f, .4f, .1f, .2f, .3f, .4f});
  w.stage().observe(0, 1, 6, cache, Rows{.4f, .1f, .1f, .4f, .4f, .1f, .1f, .4f});
  EXPECT_EQ(select(w.stage(), w.s.layer, 7, false, {0, 3, 5, 6, 7}, 0), Positions{3});
  EXPECT_EQ(select(w.stage(), w.s.layer, 7, false, {0, 3, 5, 6, 7}, 1), Positions{3});
  std::map<std::string, double> counters;
  w.stage().report(counters);
  EXPECT_EQ(counters["tova.evicted_tokens"], 3 + 3 + 1 + 1);
}

TEST(Tova, WorkedExampleHeadwise) {
  Worked w("tova:budget=3,granularity=head");
  EXPECT_EQ(w.prefill(), (std::vector<Positions>{{2, 3, 4}, {1, 2, 4}}));
  // Head 0 holds {0, 1, 5, 6}: .2 .4 .6 .8 -> step 7 drops 0. Head 1 holds
  // {0, 3, 5, 6}: .8 .2 .2 .8 -> 3 and 5 tie, the lower position goes.
  w.stage().observe(0, 0, 6, Positions{0, 1, 5, 6}, Rows{.1f, .2f, .3f, .4f, .1f, .2f, .3f, .4f});
  w.stage().observe(0, 1, 6, Positions{0, 3, 5, 6}, Rows{.4f, .1f, .1f, .4f, .4f, .1f, .1f, .4f});
  EXPECT_EQ(select(w.stage(), w.s.layer, 7, false, {0, 1, 5, 6, 7}, 0), Positions{0});
  EXPECT_EQ(select(w.stage(), w.s.layer, 7, false, {0, 3, 5, 6, 7}, 1), Positions{3});
}

// Every query sees min(t+1, N+1) entries: the cache holds that many at each
// measured step, fp16 at 2*16*d bits each, and the declared bound is N + 1.
TEST(Tova, KeptCountsAndMemoryToTheBit) {
  TempDir dir;
  const SynthConfig c = small_synth();  // P = 256, T = 320
  const int64_t d = c.head_dim;
  const std::vector<std::string> specs = {"tova:budget=40", "tova",  // N = ceil(0.2*256) = 52
                                          "tova:budget=40+kivi:bits=4,residual=32"};
  const auto runs = replay_synth(c, specs, dir, every_step());
  for (size_t i = 0; i < 2; ++i) {
    const int64_t N = i == 0 ? 40 : 52;
    for (const auto& k : runs[i].kv) {
      ASSERT_EQ(k.kept_tokens, std::min<int64_t>(k.step + 1, N + 1)) << specs[i];
      EXPECT_EQ(k.data_bits, 2 * 16 * d * k.kept_tokens);
      EXPECT_EQ(k.meta_bits, 0);
    }
    const TraceReader reader(dir.file("trace_" + std::to_string(c.seed) + ".h5"));
    const PolicyTraits traits =
        probe_traits(PolicySpec::parse(specs[i]), reader.meta(), reader.sequence(0));
    EXPECT_EQ(traits.cache_bounds.at(0).tokens, N + 1);
  }
  // With KIVI the same tokens are kept, in fewer bits.
  for (size_t r = 0; r < runs[2].kv.size(); ++r) {
    EXPECT_EQ(runs[2].kv[r].kept_tokens, runs[0].kv[r].kept_tokens);
    EXPECT_LT(runs[2].kv[r].data_bits + runs[2].kv[r].meta_bits, runs[0].kv[r].data_bits);
  }
}

// The paper's analysis: the first token is practically never dropped. On the
// synthetic trace (sinks that draw attention, as real models'), position 0
// survives every step of every layer at a budget of 1/8 of the prompt.
TEST(Tova, FirstTokenSurvivesEveryStep) {
  const SynthConfig c = small_synth();
  const TraceMeta meta = synth_meta(c);
  const auto layers = synth_sequence(c, 0);
  for (int slot = 0; slot < meta.num_layers(); ++slot) {
    const ShardContext ctx = synth_context(meta, layers, slot, c.prompt_len, c.tokens);
    Pipeline p = Pipeline::create(PolicySpec::parse("tova:ratio=0.125"), ctx, {});
    int steps = 0;
    drive_layer(*p.evicts[0], layers[slot], meta, c.prompt_len,
                [&](int t, const std::vector<Positions>& caches) {
                  for (const Positions& cache : caches) {
                    ASSERT_EQ(cache.front(), 0) << "layer " << slot << " step " << t;
                    ASSERT_LE(cache.size(), 33u);  // N + 1
                  }
                  ++steps;
                });
    EXPECT_EQ(steps, c.tokens - c.prompt_len + 1);
  }
}

TEST(Tova, BadParametersAreRefused) {
  EXPECT_NE(spec_error("tova:ratio=0"), "");
  EXPECT_NE(spec_error("tova:granularity=token"), "");
}

}  // namespace
}  // namespace kvsim::testing
