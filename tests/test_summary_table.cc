// The CLI summary table: row order and number formatting (sim/summary_table.h).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "sim/summary_table.h"

namespace kvsim {
namespace {

// A summary whose memory_ratio is `ratio` (other columns 0).
RunSummary with_memory_ratio(double ratio) {
  const auto& columns = summary_columns();
  RunSummary s;
  s.values.assign(columns.size(), 0.0);
  for (size_t c = 0; c < columns.size(); ++c) {
    if (columns[c].name == "memory_ratio") s.values[c] = ratio;
  }
  return s;
}

TEST(SummaryTable, RowsByMemoryRatioStableNanLast) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> ratios = {0.5, nan, 0.25, 1.0, 0.25, 0.125};
  std::vector<RunSummary> summaries;
  for (double r : ratios) summaries.push_back(with_memory_ratio(r));
  const std::vector<size_t> order = summary_row_order(summaries);
  ASSERT_EQ(order.size(), ratios.size());
  // Ascending, NaN last, equal ratios in run order: each consecutive pair in order.
  for (size_t i = 1; i < order.size(); ++i) {
    const double a = ratios[order[i - 1]], b = ratios[order[i]];
    if (std::isnan(a)) FAIL() << "NaN before row " << i;
    if (!std::isnan(b)) {
      EXPECT_LE(a, b);
      if (a == b) {
        EXPECT_LT(order[i - 1], order[i]);
      }
    }
  }
  EXPECT_EQ(order.back(), 1u);
}

TEST(SummaryTable, FourSignificantDigitsNeverRoundingToAWholeNumber) {
  EXPECT_EQ(format_summary_value(0.942225, 4), "0.9422");
  EXPECT_EQ(format_summary_value(16.0, 4), "16");
  EXPECT_EQ(format_summary_value(0.0, 4), "0");
  EXPECT_EQ(format_summary_value(1.0, 4), "1");
  EXPECT_EQ(format_summary_value(2.3456789, 4), "2.346");
  // Would read as "1": more digits, as long as they tell it apart.
  EXPECT_EQ(format_summary_value(0.99996, 4), "0.99996");
  EXPECT_EQ(format_summary_value(0.999987, 4), "0.99999");
  // Float rounding of 1 (a mass kept over a full cache) stays 1.
  EXPECT_EQ(format_summary_value(0.99999994, 4), "1");
  EXPECT_EQ(format_summary_value(1.2e-7, 4), "1.2e-07");
}

TEST(SummaryTable, PrintsRowsInMemoryOrder) {
  std::vector<RunResult> runs(3);
  // memory_ratio = (data + meta) / fp16 of the kv records: 0.5, 0.25, 1.
  const int64_t data[] = {50, 25, 100};
  for (size_t i = 0; i < runs.size(); ++i) {
    KvRecord kv{};
    kv.data_bits = data[i];
    kv.fp16_bits = 100;
    runs[i].kv.push_back(kv);
  }
  std::ostringstream os;
  print_summary_table(os, {{"run", {"0", "1", "2"}}}, runs);
  const std::string text = os.str();
  const size_t r0 = text.find("| 0 |"), r1 = text.find("| 1 |"), r2 = text.find("| 2 |");
  ASSERT_NE(r0, std::string::npos);
  ASSERT_NE(r1, std::string::npos);
  ASSERT_NE(r2, std::string::npos);
  EXPECT_LT(r1, r0);
  EXPECT_LT(r0, r2);
}

}  // namespace
}  // namespace kvsim
