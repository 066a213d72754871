#include "sim/summary_table.h"

#include <algorithm>
#include <iomanip>
#include <sstream>

#include "sim/base/errors.h"
#include "sim/results.h"

namespace kvsim {
namespace {

// Shown first, in this order: what the policy costs, then what it loses.
constexpr const char* kMemoryColumns[] = {"bits_per_element", "memory_ratio"};

std::string format_value(double x, int precision) {
  std::ostringstream os;
  os << std::setprecision(precision) << x;
  return os.str();
}

}  // namespace

void print_summary_table(std::ostream& os, const std::vector<TextColumn>& leading,
                         const std::vector<RunResult>& runs) {
  const auto& columns = summary_columns();
  std::vector<size_t> shown;
  for (const char* name : kMemoryColumns) {
    for (size_t c = 0; c < columns.size(); ++c) {
      if (columns[c].name == name && !columns[c].label.empty()) shown.push_back(c);
    }
  }
  for (size_t c = 0; c < columns.size(); ++c) {
    if (!columns[c].label.empty() && std::find(shown.begin(), shown.end(), c) == shown.end()) {
      shown.push_back(c);
    }
  }
  std::string header = "|", rule = "|";
  for (const auto& t : leading) {
    KVSIM_CHECK(t.cells.size() == runs.size());
    header += " " + t.header + " |";
    rule += "---|";
  }
  for (size_t c : shown) {
    header += " " + columns[c].label + " |";
    rule += "---|";
  }
  os << header << "\n" << rule << "\n";
  for (size_t r = 0; r < runs.size(); ++r) {
    const RunSummary s = summarize(runs[r]);
    os << "|";
    for (const auto& t : leading) os << " " << t.cells[r] << " |";
    for (size_t c : shown) os << " " << format_value(s.values[c], columns[c].precision) << " |";
    os << "\n";
  }
}

}  // namespace kvsim
