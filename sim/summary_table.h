// The Markdown summary table `kvsim replay` and `kvsim sweep` print: the
// caller's leading columns (policy, run, trace), then every /summary column
// that has a label (SummaryColumn::label), the memory columns first.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "sim/engine.h"

namespace kvsim {

struct TextColumn {
  std::string header;
  std::vector<std::string> cells;  // one per run
};

void print_summary_table(std::ostream& os, const std::vector<TextColumn>& leading,
                         const std::vector<RunResult>& runs);

}  // namespace kvsim
