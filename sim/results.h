// Results format v1 (docs/results-format.md): written to a temporary file and
// renamed when complete.
#pragma once

#include <string>
#include <vector>

#include "sim/engine.h"
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

// The headline numbers of one run (a row of /summary).
struct RunSummary {
  double rel_err_mean = 0, rel_err_p95 = 0, cosine_mean = 0, mass_retained_mean = 0;
  double kl_mean = 0, key_err_mean = 0, value_err_mean = 0;
  double data_bits = 0, meta_bits = 0, fp16_bits = 0, ideal_bits = 0;
  double memory_ratio() const { return fp16_bits > 0 ? (data_bits + meta_bits) / fp16_bits : 0; }
  double memory_ratio_ideal() const { return fp16_bits > 0 ? ideal_bits / fp16_bits : 0; }
  double bits_per_element() const { return 16 * memory_ratio(); }
};
RunSummary summarize(const RunResult& run);

struct ResultsContext {
  std::string trace_path;
  std::string kvsim_version;
  std::string measured_steps;
  std::vector<SequenceInfo> sequences;  // written as /sequences when given
};

void write_results(const std::string& path, const TraceMeta& meta, const ResultsContext& context,
                   const std::vector<RunResult>& runs);

}  // namespace kvsim
