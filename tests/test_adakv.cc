// AdaKV (policies/adakv.cc): hand-derived allocations (official and kvpress
// safeguards, rounding drift), the layer's total kept to the bit on a replay,
// composition, and the paper's claim that head-adaptive budgets keep at least
// uniform SnapKV's observation-window mass at the same total.
#include <gtest/gtest.h>

#include <map>

#include "evict_testing.h"
#include "sim/base/errors.h"

namespace kvsim::testing {
namespace {

// 2 kv heads (group 1), P = 6, inner SnapKV with a window of 1 (position 5)
// and no pooling, B = 3: B' = 2 per head, 4 for the layer. Window scores:
//   head 0  .50 .20 .10 .05 .05      head 1  .30 .28 .26 .08 .04
// The layer's top 4 are h0:0, h1:0, h1:1, h1:2: m = (1, 3).
std::vector<Positions> worked(const std::string& params, std::map<std::string, double>* counters) {
  HandShard s(2, 2, 2, 8, 6);
  Pipeline p = Pipeline::create(
      PolicySpec::parse("adakv:budget=3,inner=snapkv;window=1;kernel=1," + params), s.ctx, {});
  EvictStage& stage = *p.evicts[0];
  EXPECT_EQ(stage.prefill_attention_rows(), 1);  // the inner's window
  const Positions prompt = range(0, 6);
  stage.observe_prefill(0, 0, prompt, std::vector<float>{.5f, .2f, .1f, .05f, .05f, 0});
  stage.observe_prefill(0, 1, prompt, std::vector<float>{.3f, .28f, .26f, .08f, .04f, 0});
  std::vector<ArrivalView> views(2);
  for (int h = 0; h < 2; ++h) {
    views[h].kv_head = h;
    views[h].step = 5;
    views[h].prefill = true;
    views[h].candidates = prompt;
    views[h].raw = &s.layer;
  }
  stage.prefill_layer(0, views);
  std::vector<Positions> evicted = {select(stage, s.layer, 5, true, prompt, 0),
                                    select(stage, s.layer, 5, true, prompt, 1)};
  // Decoded tokens join every head.
  EXPECT_EQ(select(stage, s.layer, 6, false, {0, 5, 6}, 0), Positions{});
  if (counters) stage.report(*counters);
  return evicted;
}

TEST(AdaKv, WorkedExampleAlphaZeroFollowsTheLayerTopK) {
  std::map<std::string, double> counters;
  // B_h = m_h: head 0 keeps {0, 5}, head 1 {0, 1, 2, 5}.
  EXPECT_EQ(worked("alpha=0", &counters), (std::vector<Positions>{{1, 2, 3, 4}, {3, 4}}));
  EXPECT_EQ(counters["adakv.evicted_tokens"], 6);
  EXPECT_EQ(counters["adakv.budget_drift"], 0);
  EXPECT_EQ(counters["adakv.length_bits"], 2 * 32);
}

TEST(AdaKv, WorkedExampleOfficialSafeguardRounds) {
  std::map<std::string, double> counters;
  // floor(.5 * 2) = 1: B_0 = round(.5*1 + 1) = 2, B_1 = round(.5*3 + 1) = 3
  // (half away from zero): 5 tokens where Hkv*B' = 4, a drift of +1.
  EXPECT_EQ(worked("alpha=0.5", &counters), (std::vector<Positions>{{2, 3, 4}, {3, 4}}));
  EXPECT_EQ(counters["adakv.budget_drift"], 1);
}

TEST(AdaKv, WorkedExampleKvpressSafeguardReservesFirst) {
  std::map<std::string, double> counters;
  // Each head reserves its top floor(.5*2) = 1 (h0:0, h1:0); the 2 best of
  // the rest are h1:1 and h1:2: B = (1, 3), no drift.
  EXPECT_EQ(worked("alpha=0.5,safeguard=kvpress", &counters),
            (std::vector<Positions>{{1, 2, 3, 4}, {3, 4}}));
  EXPECT_EQ(counters["adakv.budget_drift"], 0);
  // alpha=1 reserves the whole B' per head: uniform SnapKV.
  EXPECT_EQ(worked("alpha=1,safeguard=kvpress", nullptr),
            (std::vector<Positions>{{2, 3, 4}, {2, 3, 4}}));
}

// With alpha=0 the rounding is exact, so the layer holds Hkv * B tokens
// after prefill (window included) plus the decoded tokens of every head, to
// the bit; heads differ. KIVI stores the same tokens in fewer bits.
TEST(AdaKv, LayerTotalAndMemoryToTheBit) {
  TempDir dir;
  const SynthConfig c = small_synth();  // P = 256, T = 320, 4 layers, 2 kv heads
  const int64_t d = c.head_dim, P = c.prompt_len, B = 52, H = 2;
  const std::vector<std::string> specs = {"adakv:alpha=0", "adakv:alpha=0+kivi:bits=4,residual=32"};
  const auto runs = replay_synth(c, specs, dir, every_step());
  std::map<std::pair<int, int64_t>, int64_t> layer_total;
  bool heads_differ = false;
  for (const auto& k : runs[0].kv) {
    layer_total[{k.layer, k.step}] += k.kept_tokens;
    EXPECT_EQ(k.data_bits, 2 * 16 * d * k.kept_tokens);
    EXPECT_EQ(k.meta_bits, 0);
    heads_differ = heads_differ || k.kept_tokens != B + k.step + 1 - P;
  }
  for (const auto& [key, total] : layer_total) {
    EXPECT_EQ(total, H * (B + key.second + 1 - P)) << "layer " << key.first;
  }
  EXPECT_TRUE(heads_differ);
  EXPECT_EQ(runs[0].counters.at("adakv.evicted_tokens"), 4 * H * (P - B));
  EXPECT_EQ(runs[0].counters.at("adakv.length_bits"), 4 * H * 32);
  for (size_t r = 0; r < runs[1].kv.size(); ++r) {
    EXPECT_EQ(runs[1].kv[r].kept_tokens, runs[0].kv[r].kept_tokens);
  }
}

// The paper's bound: the top weights across heads minimise the output gap.
// Test: at alpha=0 (no pooling, so the score is the window's attention), the
// observation-window mass kept over a layer's heads is at least uniform
// SnapKV's at the same total, on every layer of the synthetic trace.
TEST(AdaKv, KeepsAtLeastUniformSnapKvWindowMass) {
  const SynthConfig c = small_synth();
  const TraceMeta meta = synth_meta(c);
  const auto layers = synth_sequence(c, 0);
  const int P = c.prompt_len;
  int strictly_more = 0;
  for (int slot = 0; slot < meta.num_layers(); ++slot) {
    const ShardContext ctx = synth_context(meta, layers, slot, P, c.tokens);
    auto window_mass = [&](const std::string& spec) {
      Pipeline p = Pipeline::create(PolicySpec::parse(spec), ctx, {});
      double mass = 0;
      drive_layer(
          *p.evicts[0], layers[slot], meta, P, [&](int t, const std::vector<Positions>& caches) {
            if (t != P - 1) return;
            for (int h = 0; h < meta.num_kv_heads; ++h) {
              for (int row = P - 8; row < P; ++row) {
                for (int j = 0; j < meta.group_size(); ++j) {
                  const auto a = attention_row(layers[slot], meta, h * meta.group_size() + j, row,
                                               range(0, row + 1));
                  for (int32_t pos : caches[h]) {
                    if (pos <= row) mass += a[pos];
                  }
                }
              }
            }
          });
      return mass;
    };
    const double ada = window_mass("adakv:budget=24,alpha=0,inner=snapkv;window=8;kernel=1");
    const double uniform = window_mass("snapkv:budget=24,window=8,kernel=1");
    EXPECT_GE(ada, uniform - 1e-9) << "layer " << slot;
    strictly_more += ada > uniform + 1e-9;
  }
  EXPECT_GT(strictly_more, 0);  // the budgets do move between heads
}

TEST(AdaKv, BadInnerIsRefused) {
  EXPECT_NE(spec_error("adakv:inner=streamingllm").find("not a ScorerStage"), std::string::npos);
  EXPECT_NE(spec_error("adakv:inner=kivi").find("not an eviction scorer"), std::string::npos);
  EXPECT_NE(spec_error("adakv:inner=adakv"), "");
  EXPECT_NE(spec_error("adakv:inner=snapkv;kernel=2").find("odd"), std::string::npos);
  EXPECT_NE(spec_error("adakv:inner=snapkv;colour=red").find("unknown parameter"),
            std::string::npos);
  EXPECT_EQ(spec_error("adakv:inner=h2o+kivi:bits=2"), "");
  // The inner's '=' is part of the value: whitespace next to it is inside the
  // value and refused, never dropped; around the key's '=' it is dropped.
  EXPECT_NE(spec_error("adakv:inner=snapkv;window =8").find("whitespace"), std::string::npos);
  EXPECT_EQ(PolicySpec::parse("adakv: inner = snapkv;window=8").canonical(),
            PolicySpec::parse("adakv:inner=snapkv;window=8").canonical());
  EXPECT_EQ(spec_error("adakv:inner=tova;granularity=head"), "");
}

}  // namespace
}  // namespace kvsim::testing
