#include <gtest/gtest.h>

#include <bit>
#include <cmath>

#include "record_testing.h"
#include "sim/base/attention.h"
#include "sim/cpu_backend.h"
#include "sim/sweep.h"
#include "test_util.h"

namespace kvsim {
namespace {

using testing::TempDir;

TEST(MeasureRule, Steps) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(MeasureRule::parse("all").steps(5, 9), (V{5, 6, 7, 8}));
  EXPECT_EQ(MeasureRule::parse("stride=3").steps(5, 12), (V{5, 8, 11}));
  EXPECT_EQ(MeasureRule::parse("stride=3").steps(5, 11), (V{5, 8, 10}));  // last always included
  EXPECT_EQ(MeasureRule::parse("last=2").steps(5, 12), (V{10, 11}));
  EXPECT_EQ(MeasureRule::parse("last=100").steps(5, 8), (V{5, 6, 7}));
  EXPECT_EQ(MeasureRule::parse("auto").steps(10, 110).size(), 100u);  // <= 256: all
  const auto many = MeasureRule::parse("auto").steps(0, 10000);
  EXPECT_GE(many.size(), 200u);
  EXPECT_LE(many.size(), 258u);
  EXPECT_EQ(many.back(), 9999);
  EXPECT_THROW(MeasureRule::parse("every"), ConfigError);
  EXPECT_THROW(MeasureRule::parse("stride=0"), ConfigError);
  EXPECT_THROW(MeasureRule::parse("last=x"), ConfigError);
}

// Exact attention follows the GQA mapping, the trace's scale and each layer's window.
TEST(Engine, ExactAttentionUsesGqaScaleAndWindow) {
  SynthConfig c = synth_preset("tiny");
  c.sliding_window = 20;
  c.sliding_every = 2;  // layer 0 local, layer 1 global, ...
  const TraceMeta meta = synth_meta(c);
  const auto layers = synth_sequence(c, 0);
  const std::vector<int64_t> measured = {c.prompt_len, c.tokens - 1};
  for (int slot : {0, 1}) {
    const ExactLayer ex = cpu_backend().exact_attention(meta, layers[slot], measured);
    const int window = meta.sliding_window[slot];
    EXPECT_EQ(window, slot == 0 ? 20 : 0);
    for (size_t m = 0; m < measured.size(); ++m) {
      const int t = static_cast<int>(measured[m]);
      const int lo = window ? std::max(0, t - window + 1) : 0;
      for (int qh = 0; qh < meta.num_q_heads; ++qh) {
        const int kvh = qh / meta.group_size();
        std::vector<double> ref(meta.head_dim);
        const double lse = cpu_reference::attend(
            layers[slot].query(qh, t), layers[slot].key(kvh, lo), layers[slot].value(kvh, lo),
            t - lo + 1, meta.head_dim, meta.attn_scale, ref.data());
        EXPECT_NEAR(ex.lse[m * meta.num_q_heads + qh], lse, 1e-4);
        for (int ch = 0; ch < meta.head_dim; ++ch) {
          EXPECT_NEAR(ex.out[(m * meta.num_q_heads + qh) * meta.head_dim + ch], ref[ch], 1e-4);
        }
      }
    }
  }
}

// The exact attention runs measured steps in blocks (their queries share each key tile and
// value row): every output, log-sum-exp, top token and kept score equals the one of the step
// computed alone, to the bit, for consecutive, strided and scattered steps, with and without a
// sliding window (whose steps start at different keys and are not blocked together).
TEST(Engine, ExactAttentionInBlocksEqualsStepByStepBitwise) {
  SynthConfig c = synth_preset("tiny");
  c.sliding_window = 20;
  c.sliding_every = 2;  // layer 0 local, layer 1 global
  const TraceMeta meta = synth_meta(c);
  const auto layers = synth_sequence(c, 0);
  const int64_t P = c.prompt_len, T = c.tokens;
  const std::vector<std::vector<int64_t>> rules = {MeasureRule::parse("all").steps(P, T),
                                                   MeasureRule::parse("stride=3").steps(P, T),
                                                   {P, P + 1, P + 7, T - 1}};
  const auto bits = [](float x) { return std::bit_cast<uint32_t>(x); };
  for (int slot : {0, 1}) {
    for (const auto& measured : rules) {
      const ExactLayer all = cpu_backend().exact_attention(meta, layers[slot], measured);
      const int Hq = meta.num_q_heads, d = meta.head_dim;
      for (size_t m = 0; m < measured.size(); ++m) {
        const std::vector<int64_t> one = {measured[m]};
        const ExactLayer alone = cpu_backend().exact_attention(meta, layers[slot], one);
        for (int qh = 0; qh < Hq; ++qh) {
          ASSERT_EQ(all.lse[m * Hq + qh], alone.lse[qh]) << "slot " << slot << " step " << m;
          ASSERT_EQ(all.top1[m * Hq + qh], alone.top1[qh]);
          for (int ch = 0; ch < d; ++ch) {
            ASSERT_EQ(bits(all.out[(m * Hq + qh) * d + ch]), bits(alone.out[qh * d + ch]));
          }
        }
        ASSERT_EQ(all.score_first[m], alone.score_first[0]);
        const size_t count = static_cast<size_t>(Hq) * (measured[m] - alone.score_first[0] + 1);
        for (size_t i = 0; i < count; ++i) {
          ASSERT_EQ(bits(all.scores[all.score_offset[m] + i]), bits(alone.scores[i]));
        }
      }
    }
  }
}

TEST(Engine, SlidingWindowLayersHoldOnlyTheWindow) {
  TempDir dir;
  SynthConfig c = synth_preset("tiny");
  c.sliding_window = 24;
  c.sliding_every = 2;
  ReplayOptions all;
  all.measure = MeasureRule::parse("all");
  const auto runs = testing::replay_synth(c, {"full", "uniform:bits=2"}, dir, all);
  for (const auto& k : runs[0].kv) {
    const bool local = k.layer % 2 == 0;
    const int64_t n = local ? std::min(24, k.step + 1) : k.step + 1;
    EXPECT_EQ(k.kept_tokens, n);
    EXPECT_EQ(k.fp16_bits, 2 * 16 * c.head_dim * n);
    EXPECT_EQ(k.data_bits, k.fp16_bits);
  }
  for (const auto& s : runs[0].steps) EXPECT_EQ(s.rel_err, 0.f);  // window honoured on both sides
  for (const auto& k : runs[1].kv) {
    const bool local = k.layer % 2 == 0;
    EXPECT_EQ(k.kept_tokens, local ? std::min(24, k.step + 1) : k.step + 1);
  }
}

TEST(Engine, ResultsIdenticalForAnyThreadCount) {
  TempDir dir;
  SynthConfig c = synth_preset("tiny");
  c.sequences = 2;
  ReplayOptions one, two;
  one.threads = 1;
  two.threads = 2;
  const std::vector<std::string> specs = {"uniform:bits=2,k_axis=channel",
                                          "streamingllm:window=20"};
  const auto a = testing::replay_synth(c, specs, dir, one);
  const auto b = testing::replay_synth(c, specs, dir, two);
  ASSERT_EQ(a.size(), b.size());
  for (size_t p = 0; p < a.size(); ++p) {
    SCOPED_TRACE(specs[p]);
    ASSERT_FALSE(a[p].steps.empty());
    testing::expect_same_records(a[p], b[p]);  // every column of the schema, bit for bit
  }
}

TEST(Engine, RecordsCoverEveryLayerHeadAndStep) {
  TempDir dir;
  SynthConfig c = synth_preset("tiny");
  ReplayOptions opt;
  opt.measure = MeasureRule::parse("stride=8");
  const auto runs = testing::replay_synth(c, {"full"}, dir, opt);
  const size_t steps = opt.measure.steps(c.prompt_len, c.tokens).size();
  EXPECT_EQ(runs[0].steps.size(), steps * c.model_layers * c.q_heads);
  EXPECT_EQ(runs[0].kv.size(), steps * c.model_layers * c.kv_heads);
  for (const auto& s : runs[0].steps) EXPECT_EQ(s.kv_head, s.q_head / (c.q_heads / c.kv_heads));
}

TEST(Engine, RefusesBadSequenceAndPolicies) {
  TempDir dir;
  const SynthConfig c = synth_preset("tiny");
  ReplayOptions past_the_end;
  past_the_end.sequences = {c.sequences};
  EXPECT_THROW(testing::replay_synth(c, {"full"}, dir, past_the_end), ConfigError);
  EXPECT_THROW(testing::replay_synth(c, {}, dir), ConfigError);
  EXPECT_THROW(testing::replay_synth(c, {"uniform:group=48"}, dir), ConfigError);
}

// The message of the exception of type E that `f` throws ("" and a failure if
// it throws none; any other type escapes and fails the test).
template <typename E, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "nothing thrown";
  return "";
}

// A trace whose sequence 1 is all prompt (prompt_len == num_tokens): no decode
// step to measure. `kvsim replay` and `kvsim sweep` both refuse it, naming the
// sequence, and replay the other sequence alone.
TEST(Engine, RefusesSequenceWithoutDecodeSteps) {
  TempDir dir;
  const SynthConfig c = synth_preset("tiny");
  const std::string path = dir.file("no_decode.h5");
  {
    TraceWriter writer(path, synth_meta(c), {});
    for (int s = 0; s < 2; ++s) {
      std::vector<float> q, k, v;
      for (const LayerData& layer : synth_sequence(c, s)) {
        q.insert(q.end(), layer.q.begin(), layer.q.end());
        k.insert(k.end(), layer.k.begin(), layer.k.end());
        v.insert(v.end(), layer.v.begin(), layer.v.end());
      }
      const std::vector<int32_t> token_ids(c.tokens, 7);
      writer.add_sequence(token_ids, s == 0 ? c.prompt_len : c.tokens, q, k, v);
    }
    writer.finish();
  }
  TraceReader reader(path);
  ASSERT_EQ(reader.sequence(1).prompt_len, reader.sequence(1).num_tokens);
  const std::string expected =
      "trace sequence 1 has no decode steps (prompt_len == num_tokens): nothing to measure";
  const std::vector<PolicySpec> full = {PolicySpec::parse("full")};

  EXPECT_EQ(error_of<FormatError>([&] { replay(reader, full, {}); }), expected);
  ReplayOptions first;
  first.sequences = {0};
  EXPECT_FALSE(replay(reader, full, first)[0].steps.empty());

  const auto sweep_file = [&](const std::string& sequences) {
    return SweepFile::parse("trace: " + path + "\n" + sequences + "policies: [full]\n", "",
                            "no_decode.yaml");
  };
  EXPECT_EQ(error_of<FormatError>([&] { resolve_sweep(sweep_file(""), {}); }), expected);
  EXPECT_EQ(resolve_sweep(sweep_file("sequences: [0]\n"), {}).units.size(),
            static_cast<size_t>(reader.meta().num_layers()));
}

}  // namespace
}  // namespace kvsim
