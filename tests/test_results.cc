#include <gtest/gtest.h>

#include <filesystem>

#include "record_testing.h"
#include "sim/base/h5.h"
#include "sim/results.h"
#include "test_util.h"

namespace kvsim {
namespace {

using testing::TempDir;

TEST(Stats, PercentilesInterpolateLikeNumpy) {
  std::vector<double> v = {4, 1, 3, 2, 5};
  const Stats s = compute_stats(v);
  EXPECT_EQ(s.count, 5);
  EXPECT_DOUBLE_EQ(s.mean, 3);
  EXPECT_DOUBLE_EQ(s.p50, 3);
  EXPECT_DOUBLE_EQ(s.p95, 4.8);  // numpy.percentile([1..5], 95)
  EXPECT_DOUBLE_EQ(s.max, 5);
}

// --- reading a table back --------------------------------------------------------------
// The stored HDF5 type of a column is the schema's (class and size).
void expect_stored_type(hid_t g, const std::string& name, ColumnType type) {
  h5::Handle dataset = h5::open_dataset(g, name, "r");
  h5::Handle stored(H5Dget_type(dataset.get()));
  const H5T_class_t cls = H5Tget_class(stored.get());
  const size_t size = H5Tget_size(stored.get());
  switch (type) {
    case ColumnType::kInt32:
    case ColumnType::kInt64:
      EXPECT_EQ(cls, H5T_INTEGER) << name;
      EXPECT_EQ(size, type == ColumnType::kInt32 ? 4u : 8u) << name;
      break;
    case ColumnType::kFloat32:
    case ColumnType::kFloat64:
      EXPECT_EQ(cls, H5T_FLOAT) << name;
      EXPECT_EQ(size, type == ColumnType::kFloat32 ? 4u : 8u) << name;
      break;
    case ColumnType::kString:
      EXPECT_EQ(cls, H5T_STRING) << name;
      break;
  }
}

// Every column of `records` comes back from `group` with its stored type, its
// values (bit for bit), its unit and doc; `columns` lists the schema order.
template <typename Record>
void expect_table_reads_back(hid_t group, const std::vector<Record>& records,
                             Columns<Record> columns) {
  std::vector<std::string> names;
  for (const auto& c : columns) names.push_back(c.name);
  EXPECT_EQ(h5::read_attr_strings(group, "columns", "r"), names);
  for (const Column<Record>& c : columns) {
    SCOPED_TRACE(c.name);
    expect_stored_type(group, c.name, c.type());
    h5::Handle dataset = h5::open_dataset(group, c.name, "r");
    EXPECT_EQ(h5::read_attr_string(dataset.get(), "unit", "r"), c.unit);
    EXPECT_EQ(h5::read_attr_string(dataset.get(), "doc", "r"), c.doc);
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(records[0].*member)>;
          const auto values = h5::read_vector<T>(group, c.name, "r");
          ASSERT_EQ(values.size(), records.size());
          for (size_t i = 0; i < records.size(); ++i) {
            ASSERT_TRUE(testing::same_bits(values[i], records[i].*member)) << "row " << i;
          }
        },
        c.member);
  }
}

struct WrittenResults {
  TempDir dir;
  std::string trace_path, out;
  std::vector<SequenceInfo> sequences;
  std::vector<RunResult> runs;
  WrittenResults() {
    SynthConfig c = synth_preset("tiny");
    c.sequences = 2;
    trace_path = dir.file("t.h5");
    write_synth_trace(trace_path, c);
    TraceReader reader(trace_path);
    for (int s = 0; s < reader.num_sequences(); ++s) sequences.push_back(reader.sequence(s));
    runs = replay(reader,
                  {PolicySpec::parse("full"), PolicySpec::parse("uniform:bits=2"),
                   PolicySpec::parse("mikv:heavy=0.2,recent=0.2,lo_bits=2")},
                  {});
    out = dir.file("r.h5");
    write_results(out, reader.meta(), {trace_path, "test", "auto", sequences}, runs);
  }
};

TEST(Results, EveryRecordColumnReadsBack) {
  WrittenResults w;
  h5::Handle f = h5::open_file_readonly(w.out);
  for (size_t r = 0; r < w.runs.size(); ++r) {
    SCOPED_TRACE(w.runs[r].spec);
    h5::Handle steps = h5::open_group(f.get(), "runs/000" + std::to_string(r) + "/steps", "r");
    expect_table_reads_back<StepRecord>(steps.get(), w.runs[r].steps, kStepColumns);
    h5::Handle kv = h5::open_group(f.get(), "runs/000" + std::to_string(r) + "/kv", "r");
    expect_table_reads_back<KvRecord>(kv.get(), w.runs[r].kv, kKvColumns);
    h5::Handle counters =
        h5::open_group(f.get(), "runs/000" + std::to_string(r) + "/counters", "r");
    std::map<std::string, double> back;
    const auto names = h5::read_vector<std::string>(counters.get(), "name", "r");
    const auto values = h5::read_vector<double>(counters.get(), "value", "r");
    ASSERT_EQ(names.size(), values.size());
    for (size_t i = 0; i < names.size(); ++i) back[names[i]] = values[i];
    EXPECT_EQ(back, w.runs[r].counters);
  }
  EXPECT_FALSE(w.runs[2].counters.empty());  // mikv has counters: the table is exercised
  h5::Handle seqs = h5::open_group(f.get(), "sequences", "r");
  EXPECT_EQ(h5::read_int32_vector(seqs.get(), "prompt_len", "r"),
            (std::vector<int32_t>(2, static_cast<int32_t>(w.sequences[0].prompt_len))));
  EXPECT_EQ(h5::read_attr_strings(seqs.get(), "columns", "r"),
            (std::vector<std::string>{"sequence", "prompt_len", "num_tokens"}));
}

TEST(Results, EverySummaryColumnReadsBack) {
  WrittenResults w;
  h5::Handle f = h5::open_file_readonly(w.out);
  EXPECT_EQ(h5::read_attr_string(f.get(), "format", "r"), "kvsim-results");
  EXPECT_EQ(h5::read_attr_int(f.get(), "version", "r"), 1);
  EXPECT_EQ(h5::read_attr_int(f.get(), "num_runs", "r"), 3);
  h5::Handle summary = h5::open_group(f.get(), "summary", "r");
  std::vector<std::string> names = {"run", "spec", "resolved"};
  for (const auto& c : summary_columns()) names.push_back(c.name);
  EXPECT_EQ(h5::read_attr_strings(summary.get(), "columns", "r"), names);
  EXPECT_EQ(h5::read_int32_vector(summary.get(), "run", "r"), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(h5::read_vector<std::string>(summary.get(), "spec", "r"),
            (std::vector<std::string>{"full", "uniform:bits=2", w.runs[2].spec}));
  EXPECT_EQ(h5::read_vector<std::string>(summary.get(), "resolved", "r")[1],
            "uniform:bits=2,group=32,k_axis=token,v_axis=token");
  for (size_t c = 0; c < summary_columns().size(); ++c) {
    const SummaryColumn& column = summary_columns()[c];
    SCOPED_TRACE(column.name);
    expect_stored_type(summary.get(), column.name, ColumnType::kFloat64);
    const auto values = h5::read_vector<double>(summary.get(), column.name, "r");
    ASSERT_EQ(values.size(), w.runs.size());
    for (size_t r = 0; r < w.runs.size(); ++r) {
      EXPECT_TRUE(testing::same_bits(values[r], summarize(w.runs[r]).values[c])) << "run " << r;
    }
  }
  // The numbers themselves: fp16 is 1.0 of fp16; uniform 2-bit, group 32 over
  // d = 32 stores (2 + 32/32) bits per element.
  const auto ratio = h5::read_vector<double>(summary.get(), "memory_ratio", "r");
  EXPECT_DOUBLE_EQ(ratio[0], 1.0);
  EXPECT_DOUBLE_EQ(ratio[1], 3.0 / 16.0);
  EXPECT_DOUBLE_EQ(h5::read_vector<double>(summary.get(), "top1_agreement_mean", "r")[0], 1.0);
}

TEST(Results, AggregatesHoldEveryScopeOfEveryMetric) {
  WrittenResults w;
  h5::Handle f = h5::open_file_readonly(w.out);
  h5::Handle agg = h5::open_group(f.get(), "runs/0001/aggregates", "r");
  const auto metric = h5::read_vector<std::string>(agg.get(), "metric", "r");
  const auto scope = h5::read_vector<std::string>(agg.get(), "scope", "r");
  const auto count = h5::read_vector<int64_t>(agg.get(), "count", "r");
  const auto mean = h5::read_vector<double>(agg.get(), "mean", "r");
  const auto p95 = h5::read_vector<double>(agg.get(), "p95", "r");
  const RunResult& run = w.runs[1];
  const SynthConfig c = synth_preset("tiny");
  // Per metric: overall, each layer, each (layer, head).
  size_t expected_rows = 0;
  for (const auto& col : kStepColumns) {
    if (col.summary != Summary::kMean && col.summary != Summary::kMeanP95) continue;
    expected_rows += 1 + c.model_layers + c.model_layers * c.q_heads;
    const auto at = std::find(metric.begin(), metric.end(), col.name) - metric.begin();
    ASSERT_LT(static_cast<size_t>(at), metric.size()) << col.name;
    EXPECT_EQ(scope[at], "overall");
    std::vector<double> values;
    for (const auto& r : run.steps) values.push_back(numeric_cell(col, r));
    const Stats s = compute_stats(values);
    EXPECT_EQ(count[at], static_cast<int64_t>(run.steps.size())) << col.name;
    EXPECT_TRUE(testing::same_bits(mean[at], s.mean)) << col.name;
    EXPECT_TRUE(testing::same_bits(p95[at], s.p95)) << col.name;
  }
  for (const auto& col : kKvColumns) {
    if (col.summary != Summary::kMean && col.summary != Summary::kMeanP95) continue;
    expected_rows += 1 + c.model_layers + c.model_layers * c.kv_heads;
  }
  EXPECT_EQ(metric.size(), expected_rows);
}

TEST(Results, WrittenCompleteOrNotAtAll) {
  WrittenResults w;
  // Only the trace and the final file remain (no temporary).
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(w.dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 2);
  TempDir dir;
  EXPECT_THROW(write_results(dir.file("missing_dir/r.h5"), synth_meta(synth_preset("tiny")),
                             {"t", "test", "auto", {}}, {}),
               IoError);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace kvsim
