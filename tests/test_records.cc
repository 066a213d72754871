// The record schema (sim/records.h), the top-1 agreement metric on a worked
// example, and the schema-driven test helpers themselves.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <set>

#include "record_testing.h"
#include "sim/cpu_backend.h"
#include "sim/checkpoint.h"
#include "sim/results.h"
#include "test_util.h"

namespace kvsim {
namespace {

// The columns version 1 of the results format promises, with their types: a
// rename, a removal or a type change breaks readers (docs/results-format.md).
TEST(Schema, KeepsEveryVersion1ColumnAndType) {
  const std::vector<std::pair<const char*, ColumnType>> steps = {
      {"sequence", ColumnType::kInt32}, {"layer", ColumnType::kInt32},
      {"q_head", ColumnType::kInt32},   {"kv_head", ColumnType::kInt32},
      {"step", ColumnType::kInt32},     {"rel_err", ColumnType::kFloat32},
      {"cosine", ColumnType::kFloat32}, {"mass_retained", ColumnType::kFloat32},
      {"kl", ColumnType::kFloat32}};
  const std::vector<std::pair<const char*, ColumnType>> kv = {
      {"sequence", ColumnType::kInt32},     {"layer", ColumnType::kInt32},
      {"kv_head", ColumnType::kInt32},      {"step", ColumnType::kInt32},
      {"kept_tokens", ColumnType::kInt32},  {"data_bits", ColumnType::kInt64},
      {"meta_bits", ColumnType::kInt64},    {"fp16_bits", ColumnType::kInt64},
      {"ideal_bits", ColumnType::kFloat64}, {"key_err", ColumnType::kFloat32},
      {"value_err", ColumnType::kFloat32}};
  // Old columns keep their positions; new ones come after them.
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_STREQ(kStepColumns[i].name, steps[i].first);
    EXPECT_EQ(kStepColumns[i].type(), steps[i].second) << steps[i].first;
  }
  for (size_t i = 0; i < kv.size(); ++i) {
    EXPECT_STREQ(kKvColumns[i].name, kv[i].first);
    EXPECT_EQ(kKvColumns[i].type(), kv[i].second) << kv[i].first;
  }
  std::vector<std::string> summary;
  for (const auto& c : summary_columns()) summary.push_back(c.name);
  const std::vector<std::string> v1 = {"rel_err_mean",       "rel_err_p95",  "cosine_mean",
                                       "mass_retained_mean", "kl_mean",      "key_err_mean",
                                       "value_err_mean",     "data_bits",    "meta_bits",
                                       "fp16_bits",          "memory_ratio", "memory_ratio_ideal",
                                       "bits_per_element",   "seconds"};
  auto at = summary.begin();
  for (const auto& name : v1) {  // in this order, other columns between them allowed
    at = std::find(at, summary.end(), name);
    ASSERT_NE(at, summary.end()) << name << " missing or out of order";
  }
}

TEST(Schema, NamesAreUniqueAndDocumented) {
  for (const TableDoc& t : results_tables()) {
    std::set<std::string> seen;
    for (const ColumnDoc& c : t.columns) {
      EXPECT_TRUE(seen.insert(c.name).second) << t.where << ": " << c.name << " twice";
      EXPECT_FALSE(c.doc.empty()) << t.where << ": " << c.name << " has no doc";
    }
  }
}

// The summary rules on two hand-made runs: a mean, a sorted-sample mean and
// percentile, a sum and a ratio.
TEST(Schema, SummaryAggregatesTheRecordColumns) {
  RunResult run;
  for (int i = 0; i < 4; ++i) {
    StepRecord s{};
    s.rel_err = static_cast<float>(i + 1);  // 1 2 3 4
    s.top1_agreement = i < 3;               // 1 1 1 0
    run.steps.push_back(s);
    KvRecord k{};
    k.data_bits = 10, k.meta_bits = 2, k.fp16_bits = 48, k.ideal_bits = 11;
    run.kv.push_back(k);
  }
  run.seconds = 2.5;
  const RunSummary s = summarize(run);
  ASSERT_EQ(s.values.size(), summary_columns().size());
  EXPECT_DOUBLE_EQ(s["rel_err_mean"], 2.5);
  EXPECT_DOUBLE_EQ(s["rel_err_p95"], 3.85);  // numpy.percentile([1, 2, 3, 4], 95)
  EXPECT_DOUBLE_EQ(s["top1_agreement_mean"], 0.75);
  EXPECT_DOUBLE_EQ(s["data_bits"], 40);
  EXPECT_DOUBLE_EQ(s["ideal_bits"], 44);
  EXPECT_DOUBLE_EQ(s["memory_ratio"], 48.0 / 192.0);
  EXPECT_DOUBLE_EQ(s["memory_ratio_ideal"], 44.0 / 192.0);
  EXPECT_DOUBLE_EQ(s["bits_per_element"], 4.0);
  EXPECT_DOUBLE_EQ(s["seconds"], 2.5);
  EXPECT_THROW(s["no_such_column"], std::out_of_range);
}

// --- top-1 agreement -----------------------------------------------------------------
// One layer, one head, d = 2, scale 1, prompt 0..2, one decode step t = 3 with
// query (1, 0). Scores q·k: position 0 -> 2, 1 -> 1, 2 -> 2, 3 -> 0. The exact
// top token is position 0 (0 and 2 tie; the lowest position wins).
struct Top1Example {
  TraceMeta meta;
  LayerData layer;
  std::vector<int64_t> measured = {3};
  ExactLayer exact;

  Top1Example() {
    meta = testing::hand_meta(2, 1, 1, {0}, 1.0);
    layer.num_tokens = 4;
    layer.head_dim = 2;
    layer.k = {2, 0, 1, 0, 2, 0, 0, 0};
    layer.v = {1, 0, 0, 1, 1, 1, 0, 0};
    layer.q = {0, 1, 0, 1, 0, 1, 1, 0};  // only t = 3's query is measured
    exact = cpu_backend().exact_attention(meta, layer, measured);
  }
  StepRecord replay(const std::string& spec) const {
    const RunResult r =
        replay_shard(meta, 0, 3, {0}, {&layer}, {&exact}, PolicySpec::parse(spec), {}, measured, 0);
    EXPECT_EQ(r.steps.size(), 1u);
    return r.steps.at(0);
  }
};

TEST(TopOneAgreement, WorkedExample) {
  const Top1Example ex;
  EXPECT_EQ(ex.exact.top1, std::vector<int32_t>{0});
  // Every token kept: the compressed scores tie at 0 and 2 as well -> 0, agrees.
  EXPECT_EQ(ex.replay("full").top1_agreement, 1);
  // Keeps 2 and 3: its top token is 2, whose score equals the exact top's, but
  // the exact top token is 0 -> disagrees.
  EXPECT_EQ(ex.replay("streamingllm:sinks=0,window=2").top1_agreement, 0);
  // Keeps 0 (the sink) and 3 -> its top token is 0, agrees despite evicting.
  EXPECT_EQ(ex.replay("streamingllm:sinks=1,window=1").top1_agreement, 1);
  // Keeps only 3 -> disagrees.
  EXPECT_EQ(ex.replay("streamingllm:sinks=0,window=1").top1_agreement, 0);
}

TEST(TopOneAgreement, LosslessPolicyAlwaysAgreesOnSyntheticTraces) {
  testing::TempDir dir;
  ReplayOptions all;
  all.measure = MeasureRule::parse("all");
  const auto runs = testing::replay_synth(synth_preset("tiny"),
                                          {"full", "streamingllm:sinks=0,window=4"}, dir, all);
  int agree = 0;
  for (const auto& s : runs[0].steps) EXPECT_EQ(s.top1_agreement, 1);
  for (const auto& s : runs[1].steps) agree += s.top1_agreement;
  // A 4-token window misses the exact top token at some steps, not at all.
  EXPECT_GT(agree, 0);
  EXPECT_LT(agree, static_cast<int>(runs[1].steps.size()));
}

// --- the helpers ---------------------------------------------------------------------
// expect_same_rows reports a difference in any one column (so the determinism,
// sweep and checkpoint tests compare every column).
TEST(RecordTesting, ComparisonSeesEveryColumn) {
  const std::vector<StepRecord> base = {testing::sample_record<StepRecord>(kStepColumns, 1, 0)};
  for (const auto& column : kStepColumns) {
    std::vector<StepRecord> changed = base;
    visit_cell(column, changed[0], [](auto& cell) {
      if constexpr (std::is_arithmetic_v<std::remove_cvref_t<decltype(cell)>>) cell += 1;
    });
    ::testing::TestPartResultArray failures;
    {
      ::testing::ScopedFakeTestPartResultReporter reporter(
          ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
      testing::expect_same_rows<StepRecord>(base, changed, kStepColumns, "steps");
    }
    ASSERT_EQ(failures.size(), 1) << column.name;
    EXPECT_NE(std::string(failures.GetTestPartResult(0).message()).find(column.name),
              std::string::npos);
  }
}

// A checkpoint payload written with other record columns is refused.
TEST(RecordTesting, CheckpointPayloadCarriesTheColumnFingerprint) {
  ByteWriter w;
  RunResult part;
  part.steps.push_back(testing::sample_record<StepRecord>(kStepColumns, 2, 0));
  serialize_unit(w, {1, 2, 3, 4}, part);
  std::vector<char> bytes = w.bytes();
  {
    ByteReader in(bytes.data(), bytes.size());
    UnitKey key;
    RunResult back;
    deserialize_unit(in, key, back);
    EXPECT_EQ(key, (UnitKey{1, 2, 3, 4}));
    testing::expect_same_records(back, part);
  }
  bytes[16] ^= 1;  // the fingerprint follows the 16-byte key
  ByteReader in(bytes.data(), bytes.size());
  UnitKey key;
  RunResult back;
  EXPECT_THROW(deserialize_unit(in, key, back), FormatError);
}

}  // namespace
}  // namespace kvsim
