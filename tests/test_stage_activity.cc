// Stages that never act (sim/stage_activity.h, StoreStage::acted, the engine's eviction
// count) and the exact-zero KL of unchanged keys (sim/engine.cc).
#include <gtest/gtest.h>

#include <cstring>

#include "sim/stage_activity.h"
#include "tests/test_util.h"

namespace kvsim {
namespace {

using testing::replay_synth;
using testing::TempDir;
using testing::tiny_config;

// The fidelity columns of two runs, bit for bit.
bool same_fidelity(const RunResult& a, const RunResult& b) {
  if (a.steps.size() != b.steps.size()) return false;
  for (size_t i = 0; i < a.steps.size(); ++i) {
    if (std::memcmp(&a.steps[i], &b.steps[i], sizeof(StepRecord)) != 0) return false;
  }
  return true;
}

// The tiny trace has a 64-token prompt and 96 tokens: SKVQ's default 128-token fp16 window
// and a 200-token StreamingLLM window never fill.
TEST(StageActivity, IdleStagesAreNamedAndMeasureTheCompositionWithoutThem) {
  TempDir dir;
  const auto runs =
      replay_synth(tiny_config(),
                   {"snapkv", "snapkv+skvq:group=16,reorder=false",
                    "streamingllm:window=200+uniform:bits=4", "uniform:bits=4", "h2o", "h2o+mikv"},
                   dir);
  ASSERT_EQ(runs.size(), 6u);
  EXPECT_TRUE(idle_stages(runs[0]).empty());
  EXPECT_EQ(idle_stages(runs[1]), std::vector<std::string>{"skvq"});
  EXPECT_EQ(idle_stages(runs[2]), std::vector<std::string>{"streamingllm"});
  EXPECT_TRUE(idle_stages(runs[3]).empty());
  EXPECT_TRUE(idle_stages(runs[4]).empty());
  EXPECT_EQ(idle_stages(runs[5]), std::vector<std::string>{"mikv"});
  // What "never acted" promises: the run measures what the composition without it measures.
  EXPECT_TRUE(same_fidelity(runs[1], runs[0]));
  EXPECT_TRUE(same_fidelity(runs[2], runs[3]));
  EXPECT_TRUE(same_fidelity(runs[5], runs[4]));
  // Each shard (sequence x layer group) counted once per stage.
  const int64_t shards = tiny_config().model_layers * tiny_config().sequences;
  EXPECT_EQ(runs[1].stage_acted, (std::vector<int64_t>{shards, 0}));
  const std::string warning = idle_stage_warnings("run 1", runs[1]);
  EXPECT_NE(warning.find("run 1: stage skvq never acted"), std::string::npos) << warning;
  EXPECT_NE(warning.find("stored no entry below 16 bits"), std::string::npos) << warning;
  EXPECT_NE(idle_stage_warnings("r", runs[2]).find("evicted no entry"), std::string::npos);
}

TEST(StageActivity, EveryStageActingGivesNoWarning) {
  TempDir dir;
  const auto runs = replay_synth(tiny_config(),
                                 {"snapkv+skvq:group=16,reorder=false,window=8",
                                  "h2o:heavy=0.25,recent=0.25+mikv:heavy=0.05,recent=0.05",
                                  "streamingllm:window=32+kivi:residual=32", "full"},
                                 dir);
  for (const auto& run : runs) {
    EXPECT_TRUE(idle_stages(run).empty()) << run.spec;
    EXPECT_EQ(idle_stage_warnings("run", run), "") << run.spec;
    for (int64_t shards : run.stage_acted) EXPECT_GT(shards, 0) << run.spec;
  }
  // An acting quantizer changes what is measured.
  const auto plain = replay_synth(tiny_config(), {"snapkv"}, dir);
  EXPECT_FALSE(same_fidelity(runs[0], plain[0]));
}

TEST(StageActivity, MergeStageActsWhenItMerges) {
  TempDir dir;
  const auto runs = replay_synth(tiny_config(), {"minicache", "minicache+kivi:residual=32"}, dir);
  for (const auto& run : runs) {
    EXPECT_TRUE(idle_stages(run).empty()) << run.spec;
    EXPECT_GT(run.counters.at("minicache.merged"), 0) << run.spec;
  }
  // The quantizer inside the merge stage is the spec's second stage.
  EXPECT_EQ(runs[1].stage_acted.size(), 2u);
}

// KL over the kept tokens is 0 exactly when no kept key changed (pure eviction, fp16),
// and positive where keys are quantized.
TEST(KeptKl, ExactlyZeroForUnchangedKeys) {
  TempDir dir;
  const auto runs = replay_synth(tiny_config(),
                                 {"full", "snapkv:ratio=0.25", "h2o", "streamingllm:window=16",
                                  "uniform:bits=2", "snapkv:ratio=0.25+uniform:bits=2"},
                                 dir, testing::every_step());
  for (size_t r = 0; r < 4; ++r) {
    for (const auto& s : runs[r].steps) ASSERT_EQ(s.kl, 0.0f) << runs[r].spec << " " << s.step;
  }
  for (size_t r = 4; r < runs.size(); ++r) {
    size_t positive = 0;
    for (const auto& s : runs[r].steps) positive += s.kl > 0;
    EXPECT_GT(positive, runs[r].steps.size() / 2) << runs[r].spec;
  }
  // Eviction loses mass where KL is 0: the two columns measure different things.
  double lost = 0;
  for (const auto& s : runs[1].steps) lost += 1 - s.mass_retained;
  EXPECT_GT(lost, 0);
}

}  // namespace
}  // namespace kvsim
