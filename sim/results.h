// Results format v1 (docs/results-format.md): written to a temporary file and
// renamed when complete. The one writer of `kvsim replay` and `kvsim sweep`.
// Every table's columns come from a schema (sim/records.h for the records, the
// lists in results.cc for the others); results_tables() describes them all.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "sim/base/h5.h"
#include "sim/engine.h"
#include "sim/schema.h"
#include "trace/trace.h"

namespace kvsim {

inline constexpr const char* kResultsFormatName = "kvsim-results";
inline constexpr int64_t kResultsFormatVersion = 1;

struct Stats {
  int64_t count = 0;
  double mean = 0, p50 = 0, p95 = 0, max = 0;
};
// Linear-interpolation percentiles (as numpy's default); `values` is reordered.
Stats compute_stats(std::vector<double>& values);

// A float64 column of /summary, derived from the record columns (Summary::kMean,
// kMeanP95, kSum), from the memory tallies, or the run's wall time.
struct SummaryColumn {
  std::string name, unit, doc;
  std::string label;  // header in the CLI summary table; "" = not shown
  int precision = 4;
};
// In /summary's order (after `run`, `spec`, `resolved`): the record statistics
// (steps, then kv), the record sums, the memory ratios, `seconds`.
const std::vector<SummaryColumn>& summary_columns();

// The headline numbers of one run (a row of /summary).
struct RunSummary {
  std::vector<double> values;  // aligned with summary_columns()
  // The value of a column by name; throws std::out_of_range for an unknown name.
  double operator[](std::string_view column) const;
};
RunSummary summarize(const RunResult& run);
// The same, given the statistics of some record columns already computed from the same
// samples, keyed "`table/column`" (the results file's aggregates: no column sorted twice).
RunSummary summarize(const RunResult& run, std::map<std::string, Stats> known);

// A row of /sequences. `trace_index` is written only by a sweep over several traces.
struct SequenceRow {
  int32_t trace_index = 0, sequence = 0, prompt_len = 0, num_tokens = 0;
};
extern const Column<SequenceRow> kSequenceColumns[4];

struct ResultsContext {
  std::string trace_path;
  std::string kvsim_version;
  std::string measured_steps;
  std::vector<SequenceInfo> sequences;  // written as /sequences when given
};

// Adds objects to the file before it is closed and renamed (the sweep's tables).
using ResultsExtension = std::function<void(hid_t root)>;

void write_results(const std::string& path, const TraceMeta& meta, const ResultsContext& context,
                   const std::vector<RunResult>& runs, const ResultsExtension& extend = {});

// Every table `kvsim replay` writes, with its columns (what the docs show).
std::vector<TableDoc> results_tables();

}  // namespace kvsim
