// The Markdown summary table `kvsim replay` and `kvsim sweep` print: the
// caller's leading columns (run, trace, policy), then every /summary column
// that has a label (SummaryColumn::label), the memory columns first. Rows are
// sorted by memory ratio as the report's table (docs/cli.md, "The summary table").
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "sim/engine.h"
#include "sim/results.h"

namespace kvsim {

struct TextColumn {
  std::string header;
  std::vector<std::string> cells;  // one per run
};

// `x` with `precision` significant digits; a value that is not a whole number gets up to
// two more digits rather than print as one (0.99996 is "0.99996", not "1").
std::string format_summary_value(double x, int precision);

// The order of the rows: ascending memory_ratio, NaN last, ties in run order (stable).
std::vector<size_t> summary_row_order(const std::vector<RunSummary>& summaries);

void print_summary_table(std::ostream& os, const std::vector<TextColumn>& leading,
                         const std::vector<RunResult>& runs);

}  // namespace kvsim
