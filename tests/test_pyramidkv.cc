// PyramidKV (policies/pyramidkv.cc): the layer budgets of the schedule to the
// bit on replays (plain, capped, short-prompt fallbacks, a trace of some
// layers), the selection is SnapKV's at the layer's budget, and the paper's
// closed form of the pyramid.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "evict_testing.h"
#include "sim/base/errors.h"

namespace kvsim::testing {
namespace {

// Kept tokens of each (layer, step) of a replay of `spec` on `c`, checked to
// equal budget[layer] + decoded tokens on every record, at 2*16*d bits each;
// the counter pyramidkv.budget_tokens sums the layers' budgets over the kv
// heads (a layer left whole, M > P, has none).
void expect_layer_budgets(const SynthConfig& c, const std::string& spec,
                          const std::map<int, int64_t>& budget, bool whole = false) {
  TempDir dir;
  const auto runs = replay_synth(c, {spec}, dir, every_step());
  ASSERT_FALSE(runs[0].kv.empty());
  for (const auto& k : runs[0].kv) {
    const int64_t decode = k.step + 1 - c.prompt_len;
    ASSERT_EQ(k.kept_tokens, budget.at(k.layer) + decode) << spec << " layer " << k.layer;
    EXPECT_EQ(k.data_bits, 2 * 16 * c.head_dim * k.kept_tokens);
  }
  int64_t total = 0;
  for (const auto& [layer, tokens] : budget) total += whole ? 0 : tokens;
  EXPECT_EQ(runs[0].counters.at("pyramidkv.budget_tokens"), total * c.kv_heads) << spec;
}

// P = 256, 4 model layers, window 8.
//   M = 52: Bbar = 44, m_min = floor(44/20) = 2, m_max = 86, step = floor(84/3) = 28:
//     k = 86, 58, 30, 2; kept 94, 66, 38, 10 (sum 208 = 4 * 52).
//   M = 136: Bbar = 128, m_min = 6, m_max = 250 >= P - w = 248: m_max = 248,
//     m_min = 8, step = 80: k = 248, 168, 88, 8; kept 256, 176, 96, 16.
//   M = 200: P < 2*Bbar = 384: every layer keeps M. M = 300 > P: nothing evicted.
TEST(PyramidKv, LayerBudgetsToTheBit) {
  const SynthConfig c = small_synth();
  expect_layer_budgets(c, "pyramidkv", {{0, 94}, {1, 66}, {2, 38}, {3, 10}});  // M = ceil(.2*256)
  expect_layer_budgets(c, "pyramidkv:budget=136", {{0, 256}, {1, 176}, {2, 96}, {3, 16}});
  expect_layer_budgets(c, "pyramidkv:budget=200", {{0, 200}, {1, 200}, {2, 200}, {3, 200}});
  expect_layer_budgets(c, "pyramidkv:budget=300", {{0, 256}, {1, 256}, {2, 256}, {3, 256}},
                       /*whole=*/true);
  // beta = 4: m_min = 11, m_max = 77, step = 22: 77, 55, 33, 11 (+8).
  expect_layer_budgets(c, "pyramidkv:beta=4", {{0, 85}, {1, 63}, {2, 41}, {3, 19}});
}

// The model's layer index decides, not the slot: a trace of layers 1 and 3
// holds their budgets (66 and 10 at M = 52), part of the model's.
TEST(PyramidKv, UsesTheModelsLayerIndex) {
  SynthConfig c = small_synth();
  c.keep_layers = {1, 3};
  expect_layer_budgets(c, "pyramidkv", {{1, 66}, {3, 10}});
}

// The selection is SnapKV's (window 8, kernel 7, max pool) at the layer's budget.
TEST(PyramidKv, SelectsAsSnapKvAtTheLayerBudget) {
  const SynthConfig c = small_synth();
  const TraceMeta meta = synth_meta(c);
  const auto layers = synth_sequence(c, 0);
  const std::map<int, int> budget = {{0, 94}, {1, 66}, {2, 38}, {3, 10}};
  for (int slot = 0; slot < meta.num_layers(); ++slot) {
    const ShardContext ctx = synth_context(meta, layers, slot, c.prompt_len, c.tokens);
    auto prefill_caches = [&](const std::string& spec) {
      Pipeline p = Pipeline::create(PolicySpec::parse(spec), ctx, {});
      std::vector<Positions> out;
      drive_layer(*p.evicts[0], layers[slot], meta, c.prompt_len,
                  [&](int t, const std::vector<Positions>& caches) {
                    if (t == c.prompt_len - 1) out = caches;
                  });
      return out;
    };
    const auto pyramid = prefill_caches("pyramidkv");
    EXPECT_EQ(pyramid, prefill_caches("snapkv:window=8,budget=" + std::to_string(budget.at(slot))))
        << "layer " << slot;
    EXPECT_EQ(pyramid[0].size(), static_cast<size_t>(budget.at(slot)));
  }
}

// The paper's closed form (Bbar = M - w per layer, L layers): the top layer
// keeps Bbar/beta, the bottom 2*Bbar - Bbar/beta, arithmetic between, so the
// layers hold L*Bbar in all. The integer schedule (floored m_min and step)
// keeps the bottom within a token, the top within L tokens (< 1 per step), and
// holds at least L*Bbar, less than L(L-1)/2 more.
TEST(PyramidKv, MatchesThePapersClosedForm) {
  for (int layers : {4, 7, 12}) {
    SynthConfig c = small_synth();
    c.model_layers = layers;
    c.tokens = 260;
    TempDir dir;
    const int64_t M = 72, w = 8, bbar = M - w;
    const auto runs = replay_synth(c, {"pyramidkv:budget=72"}, dir);
    std::map<int, int64_t> kept;  // layer -> tokens at the first measured step
    for (const auto& k : runs[0].kv) {
      if (k.kv_head == 0 && !kept.count(k.layer)) {
        kept[k.layer] = k.kept_tokens - (k.step + 1 - 256);
      }
    }
    ASSERT_EQ(kept.size(), static_cast<size_t>(layers));
    EXPECT_NEAR(static_cast<double>(kept.at(layers - 1) - w), bbar / 20.0, layers) << layers;
    EXPECT_NEAR(static_cast<double>(kept.at(0) - w), 2 * bbar - bbar / 20.0, 1.0) << layers;
    int64_t total = 0;
    for (int l = 0; l < layers; ++l) {
      total += kept.at(l) - w;
      if (l > 0) {
        EXPECT_LE(kept.at(l), kept.at(l - 1));
      }
    }
    EXPECT_GE(total, layers * bbar);
    EXPECT_LT(total, layers * bbar + layers * (layers - 1) / 2);
  }
}

TEST(PyramidKv, BadParametersAreRefused) {
  EXPECT_NE(spec_error("pyramidkv:kernel=4").find("odd"), std::string::npos);
  EXPECT_NE(spec_error("pyramidkv:ratio=0"), "");
  EXPECT_NE(spec_error("pyramidkv:beta=0.5"), "");
}

}  // namespace
}  // namespace kvsim::testing
