// The live session (sim/live_session.h) fed a trace's own rows, layer by layer and token by
// token as a model would produce them, holds the caches replay builds from the same trace:
// after prefill (replay_prefill_caches) and at the last step (replay's KvRecords), for an
// evict stage with decode-attention feedback, a quantizer and a cross-layer merge.
#include <gtest/gtest.h>

#include <numeric>

#include "sim/base/errors.h"
#include "sim/engine.h"
#include "sim/live_session.h"
#include "tests/test_util.h"
#include "trace/synth.h"

namespace kvsim {
namespace {

LiveModelShape shape_of(const TraceMeta& meta) {
  return {meta.model_name, meta.num_layers(),   meta.num_q_heads, meta.num_kv_heads,
          meta.head_dim,   meta.sliding_window, meta.attn_scale,  meta.dtype};
}

// Rows [from, from + n) of one layer: q [Hq, n, d], k and v [Hkv, n, d].
struct Rows {
  std::vector<float> q, k, v;
};
Rows rows(const LayerData& layer, const TraceMeta& meta, int64_t from, int64_t n) {
  Rows r;
  const int d = meta.head_dim;
  for (int h = 0; h < meta.num_q_heads; ++h)
    r.q.insert(r.q.end(), layer.query(h, from), layer.query(h, from) + n * d);
  for (int h = 0; h < meta.num_kv_heads; ++h) {
    r.k.insert(r.k.end(), layer.key(h, from), layer.key(h, from) + n * d);
    r.v.insert(r.v.end(), layer.value(h, from), layer.value(h, from) + n * d);
  }
  return r;
}

class LiveSessionTest : public ::testing::TestWithParam<const char*> {};

TEST_P(LiveSessionTest, HoldsReplaysCaches) {
  testing::TempDir dir;
  SynthConfig config = testing::small_synth();
  config.dtype = StoredDType::kFloat32;
  config.tokens = 272;  // 16 decode steps
  const std::string path = dir.file("t.h5");
  write_synth_trace(path, config);
  const TraceReader trace(path);
  const TraceMeta& meta = trace.meta();
  std::vector<int> all(meta.num_model_layers);
  std::iota(all.begin(), all.end(), 0);
  ASSERT_EQ(meta.layer_ids, all);  // the live session sees every layer
  const SequenceInfo& seq = trace.sequence(0);
  const int64_t P = seq.prompt_len, T = seq.num_tokens;
  std::vector<LayerData> layers;
  for (int l = 0; l < meta.num_layers(); ++l) layers.push_back(trace.read_layer(0, l));

  LiveSession live(shape_of(meta), GetParam(), 0, P, T, 0, &trace);
  for (int l = 0; l < meta.num_layers(); ++l) {
    const Rows r = rows(layers[l], meta, 0, P);
    live.append(l, r.q.data(), r.k.data(), r.v.data(), P);
  }
  const auto prefill = replay_prefill_caches(trace, GetParam(), 0);
  for (int l = 0; l < meta.num_layers(); ++l) {
    for (int h = 0; h < meta.num_kv_heads; ++h) {
      const HeadCache& want = prefill[l * meta.num_kv_heads + h];
      EXPECT_EQ(live.cache(l, h).positions, want.positions) << l << " " << h;
      EXPECT_EQ(live.cache(l, h).keys, want.keys) << l << " " << h;
      EXPECT_EQ(live.cache(l, h).values, want.values) << l << " " << h;
    }
  }
  for (int64_t t = P; t < T; ++t) {
    for (int l = 0; l < meta.num_layers(); ++l) {
      const Rows r = rows(layers[l], meta, t, 1);
      live.append(l, r.q.data(), r.k.data(), r.v.data(), 1);
      LiveView view;
      live.view(l, view);  // the newest token is attended, in the cache or exactly
      for (int h = 0; h < meta.num_kv_heads; ++h) {
        const int32_t* pos = view.positions.data() + h * view.width;
        EXPECT_TRUE(std::find(pos, pos + view.lengths[h], t) != pos + view.lengths[h] ||
                    live.cache(l, h).find(static_cast<int32_t>(t)) < 0);
      }
    }
  }
  ReplayOptions options;
  options.measure = MeasureRule::parse("last=1");
  options.sequences = {0};
  const RunResult replayed = replay(trace, {PolicySpec::parse(GetParam())}, options)[0];
  int64_t bits = 0;
  for (const KvRecord& kv : replayed.kv) {
    ASSERT_EQ(kv.step, T - 1);
    EXPECT_EQ(static_cast<int32_t>(live.cache(kv.layer, kv.kv_head).size()), kv.kept_tokens);
    bits += kv.data_bits + kv.meta_bits;
  }
  EXPECT_EQ(live.footprint().bits, bits);
  EXPECT_LT(live.footprint().bits, live.footprint().fp16_bits);  // the policy compressed
}

INSTANTIATE_TEST_SUITE_P(Policies, LiveSessionTest,
                         ::testing::Values("h2o:heavy_tokens=32,recent_tokens=32+kivi:bits=2",
                                           "snapkv:ratio=0.3", "minicache+kivi:bits=4",
                                           "random:ratio=0.5"));

TEST(LiveSession, RefusesWhatItCannotRun) {
  LiveModelShape shape{"m", 2, 4, 2, 16, {0, 0}, 0.25, StoredDType::kFloat32};
  EXPECT_THROW(LiveSession(shape, "oracle", 0, 4, 8), ConfigError);
  EXPECT_THROW(LiveSession(shape, "no_such_policy", 0, 4, 8), ConfigError);
  EXPECT_THROW(LiveSession(shape, "skvq", 0, 4, 8), ConfigError);  // calibrates on a trace
  EXPECT_THROW(LiveSession(shape, "full", 0, 9, 8), ConfigError);  // prompt > max tokens
  LiveSession live(shape, "full", 0, 4, 5);
  std::vector<float> q(4 * 4 * 16, 1.f), kv(2 * 4 * 16, 1.f);
  EXPECT_THROW(live.append(0, q.data(), kv.data(), kv.data(), 3), ConfigError);  // not P
  EXPECT_THROW(live.append(2, q.data(), kv.data(), kv.data(), 4), ConfigError);  // no layer
  live.append(0, q.data(), kv.data(), kv.data(), 4);
  live.append(1, q.data(), kv.data(), kv.data(), 4);
  live.append(0, q.data(), kv.data(), kv.data(), 1);
  EXPECT_THROW(live.append(0, q.data(), kv.data(), kv.data(), 1), ConfigError);  // max tokens
  EXPECT_EQ(live.footprint().kept_tokens, 2 * 5 + 2 * 4);
}

}  // namespace
}  // namespace kvsim
