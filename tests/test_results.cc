#include <gtest/gtest.h>

#include <filesystem>

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

TEST(Results, WrittenCompleteAndReadable) {
  TempDir dir;
  SynthConfig c = synth_preset("tiny");
  const std::string trace_path = dir.file("t.h5");
  write_synth_trace(trace_path, c);
  TraceReader reader(trace_path);
  const auto runs =
      replay(reader, {PolicySpec::parse("full"), PolicySpec::parse("uniform:bits=2")}, {});
  const std::string out = dir.file("r.h5");
  write_results(out, reader.meta(), {trace_path, "test", "auto", {}}, runs);
  // Only the final file remains (no temporary).
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 2);

  h5::Handle f = h5::open_file_readonly(out);
  EXPECT_EQ(h5::read_attr_string(f.get(), "format", "r"), "kvsim-results");
  EXPECT_EQ(h5::read_attr_int(f.get(), "version", "r"), 1);
  EXPECT_EQ(h5::read_attr_int(f.get(), "num_runs", "r"), 2);
  EXPECT_EQ(h5::read_attr_string(f.get(), "trace_id", "r"), reader.meta().trace_id);
  h5::Handle run1 = h5::open_group(f.get(), "runs/0001", "r");
  EXPECT_EQ(h5::read_attr_string(run1.get(), "resolved", "r"),
            "uniform:bits=2,group=32,k_axis=token,v_axis=token");
  const auto layer = h5::read_int32_vector(run1.get(), "steps/layer", "r");
  EXPECT_EQ(layer.size(), runs[1].steps.size());
  const auto kv_step = h5::read_int32_vector(run1.get(), "kv/step", "r");
  EXPECT_EQ(kv_step.size(), runs[1].kv.size());
  for (const char* table : {"steps", "kv", "aggregates"}) {
    h5::Handle g = h5::open_group(run1.get(), table, "r");
    hsize_t n = 0;
    H5Gget_num_objs(g.get(), &n);
    EXPECT_GT(n, 3u) << table;
  }
  h5::Handle summary = h5::open_group(f.get(), "summary", "r");
  h5::Handle ratio = h5::open_dataset(summary.get(), "memory_ratio", "r");
  double ratios[2];
  ASSERT_GE(H5Dread(ratio.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, ratios), 0);
  EXPECT_DOUBLE_EQ(ratios[0], 1.0);
  // uniform 2-bit, group 32 over d=32: (2 + 32/32) / 16 per element.
  EXPECT_DOUBLE_EQ(ratios[1], 3.0 / 16.0);
}

TEST(Results, UnwritableDestinationLeavesNothing) {
  TempDir dir;
  EXPECT_THROW(write_results(dir.file("missing_dir/r.h5"), synth_meta(synth_preset("tiny")),
                             {"t", "test", "auto", {}}, {}),
               IoError);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace kvsim
