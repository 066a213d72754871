// GEAR: a hand-worked chunk (sparse outliers, the KIVI backbone, bits), the low-rank term's
// bits, memory to the bit at every decode step with the streaming buffer, the paper's
// ordering of errors (D^ + L + S < D^ + L < D^) on the embedded SmolLM2 trace, eviction and
// bad parameters.
#include <gtest/gtest.h>

#include "test_util.h"

namespace kvsim {
namespace {

using testing::TempDir;

// d = 4, G = 4, n_b = 4, b = 1, s = 0.5 (one outlier per side of every vector), rank 0.
// Prefill of 4 tokens: one chunk. Every key channel is [0, 1, 2, 10] over the tokens and
// every value token is [0, 1, 2, 10] over the channels:
//   outliers 0 and 10 (kept exact), replaced by the mean 3.25 -> [3.25, 1, 2, 3.25];
//   1 bit: min 1, scale 2.25: 3.25 -> 1 -> 3.25, 1 -> 0 -> 1, 2 -> 0.44 -> 0 -> 1.
//   So every vector comes back as [0, 1, 1, 10].
TEST(Gear, HandWorkedChunkAndBits) {
  testing::HandShard s(1, 1, 4, 4, 4);
  const std::vector<float> col = {0, 1, 2, 10};
  for (int t = 0; t < 4; ++t) {
    s.set_key(0, t, std::vector<float>(4, col[t]));
    std::copy(col.begin(), col.end(), s.layer.v.begin() + t * 4);
  }
  for (int rank : {0, 1}) {
    const std::string spec =
        "gear:bits=1,group=4,buffer=4,outliers=0.5,rank_prefill=" + std::to_string(rank);
    auto store = Pipeline::create(PolicySpec::parse(spec), s.ctx, {}).store;
    HeadCache cache;
    cache.head_dim = 4;
    store->insert(0, 0, cache, testing::range(0, 4), s.layer, true);
    const std::vector<float> back = {0, 1, 1, 10};
    if (rank == 0) {
      for (int t = 0; t < 4; ++t) {
        for (int c = 0; c < 4; ++c) {
          EXPECT_EQ(cache.keys[t * 4 + c], back[t]) << "key " << t << "," << c;
          EXPECT_EQ(cache.values[t * 4 + c], back[c]) << "value " << t << "," << c;
        }
      }
    }
    // D^: 2 x 16 codes at 1 bit; one key group (4 channels x 32) and 4 value groups (x 32);
    // 16 outliers (2 per key channel, 2 per value token) at 16 + 32; L: 16 r (4 + 4) per side.
    const MemoryBits m = store->memory(0, 0);
    EXPECT_EQ(m.data, 2 * 16 * 1 + 16 * 16 + 2 * 16 * rank * (4 + 4)) << "rank " << rank;
    EXPECT_EQ(m.meta, 4 * 32 + 4 * 32 + 16 * 32) << "rank " << rank;
    // Evicting token 3 frees its codes, its key and value outliers and its rows of Q.
    store->removed(0, 0, cache, std::vector<int32_t>{3});
    const MemoryBits after = store->memory(0, 0);
    EXPECT_EQ(m.data - after.data, 2 * 4 * 1 + 6 * 16 + 2 * 16 * rank) << "rank " << rank;
    EXPECT_EQ(m.meta - after.meta, 32 + 6 * 32) << "rank " << rank;
  }
}

// Memory at every decode step with the streaming buffer (outliers off so that every bit is
// predictable): after a 64-token prefill the whole prompt is one chunk (rank 4); 1..32 fp16
// tokens when attending; a full buffer becomes a rank-2 chunk at the next step.
TEST(Gear, StreamingBufferMemoryToTheBit) {
  TempDir dir;
  const SynthConfig c = testing::tiny_config();  // d = 32, P = 64, T = 96
  const auto runs =
      testing::replay_synth(c, {"gear:bits=2,group=32,buffer=32,outliers=0,rank=2,rank_prefill=4"},
                            dir, testing::every_step());
  const int64_t d = c.head_dim;
  ASSERT_FALSE(runs[0].kv.empty());
  for (const auto& k : runs[0].kv) {
    const int64_t n = k.step + 1, buffer = (k.step - 64) % 32 + 1, compressed = n - buffer;
    const int64_t decode_chunks = (compressed - 64) / 32;
    const int64_t data = buffer * 2 * d * 16 + compressed * 2 * d * 2 + 64 * 16 * 2 * 4 +
                         16 * d * 2 * 4 + decode_chunks * (32 * 16 * 2 * 2 + 16 * d * 2 * 2);
    const int64_t meta = compressed / 32 * d * 32 + compressed * (d / 32) * 32;
    EXPECT_EQ(k.data_bits, data) << "step " << k.step;
    EXPECT_EQ(k.meta_bits, meta) << "step " << k.step;
  }
}

double err(const std::string& spec, bool keys) {
  TraceReader reader(std::string(KVSIM_SOURCE_DIR) + "/trace/data/smollm2_default.h5");
  ReplayOptions options;
  options.measure = MeasureRule::parse("last=4");
  const RunResult r = replay(reader, {PolicySpec::parse(spec)}, options)[0];
  double sum = 0;
  for (const auto& k : r.kv) sum += keys ? k.key_err : k.value_err;
  return sum / static_cast<double>(r.kv.size());
}

// methods.md: error D^ + L + S < D^ + L < D^ at the same b (GEAR-KIVI, 2 bits).
TEST(Gear, LowRankAndOutliersLowerTheError) {
  for (bool keys : {true, false}) {
    const double backbone = err("gear:outliers=0,rank=0,rank_prefill=0", keys);
    const double low_rank = err("gear:outliers=0", keys);
    const double full = err("gear:outliers=0.1", keys);
    std::cout << "[gear] " << (keys ? "key" : "value") << "_err D^ " << backbone << ", D^+L "
              << low_rank << ", D^+L+S (s=10%) " << full << "\n";
    EXPECT_LT(low_rank, backbone);
    EXPECT_LT(full, low_rank);
  }
}

// KCVT: keys per channel over the whole chunk (one group), values per token over all channels;
// evicting tokens frees their codes, and the key group goes with the chunk's last token.
TEST(Gear, KcvtBackboneAfterEviction) {
  TempDir dir;
  const SynthConfig c = testing::tiny_config();  // d = 32, P = 64
  const auto runs = testing::replay_synth(
      c,
      {"gear:backbone=kcvt,bits=4,outliers=0,rank=0,rank_prefill=0,buffer=32",
       "streamingllm:sinks=4,window=20+gear:backbone=kcvt,bits=4,outliers=0,rank=0,"
       "rank_prefill=0,buffer=32"},
      dir, testing::every_step());
  const int64_t d = c.head_dim;
  for (const auto& k : runs[0].kv) {
    const int64_t n = k.step + 1, buffer = (k.step - 64) % 32 + 1, compressed = n - buffer;
    EXPECT_EQ(k.data_bits, buffer * 2 * d * 16 + compressed * 2 * d * 4) << "step " << k.step;
    EXPECT_EQ(k.meta_bits, (1 + (compressed - 64) / 32) * d * 32 + compressed * 32)
        << "step " << k.step;  // one key group per chunk (the prefill chunk: 64 tokens)
  }
  for (const auto& k : runs[1].kv) EXPECT_EQ(k.kept_tokens, 24) << "step " << k.step;
  EXPECT_LT(runs[1].kv.back().data_bits, runs[0].kv.back().data_bits);
}

TEST(Gear, RefusesBadParameters) {
  EXPECT_NE(testing::spec_error("gear:group=64,buffer=96").find("multiple of group"),
            std::string::npos);
  TraceMeta meta = testing::hand_meta(32);
  EXPECT_THROW(PolicySpec::parse("gear:group=64").check_against(meta), ConfigError);
  EXPECT_NO_THROW(PolicySpec::parse("gear:group=64,backbone=kcvt").check_against(meta));
}

}  // namespace
}  // namespace kvsim
