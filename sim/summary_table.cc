#include "sim/summary_table.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <numeric>
#include <sstream>

#include "sim/base/errors.h"
#include "sim/results.h"

namespace kvsim {
namespace {

// Shown first, in this order: what the policy costs, then what it loses.
constexpr const char* kMemoryColumns[] = {"bits_per_element", "memory_ratio"};

std::string with_precision(double x, int precision) {
  std::ostringstream os;
  os << std::setprecision(precision) << x;
  return os.str();
}

}  // namespace

std::string format_summary_value(double x, int precision) {
  std::string text = with_precision(x, precision);
  if (!std::isfinite(x) || x == std::round(x)) return text;
  // A value that is not a whole number does not print as one (a cosine of 0.99996 is not
  // "1"): up to kMaxExtraDigits more digits; beyond that it is float rounding (a mass kept
  // of 0.99999994 over an uncompressed cache prints as 1).
  constexpr int kMaxExtraDigits = 2;
  for (int p = precision + 1; p <= precision + kMaxExtraDigits && std::stod(text) == std::round(x);
       ++p) {
    text = with_precision(x, p);
  }
  return text;
}

std::vector<size_t> summary_row_order(const std::vector<RunSummary>& summaries) {
  const auto& columns = summary_columns();
  const auto it = std::find_if(columns.begin(), columns.end(),
                               [](const SummaryColumn& c) { return c.name == "memory_ratio"; });
  KVSIM_CHECK(it != columns.end());
  const size_t memory = static_cast<size_t>(it - columns.begin());
  std::vector<size_t> order(summaries.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // Ascending memory ratio, NaN last, ties in run order (as the report's table).
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const double x = summaries[a].values[memory], y = summaries[b].values[memory];
    if (std::isnan(x) || std::isnan(y)) return !std::isnan(x) && std::isnan(y);
    return x < y;
  });
  return order;
}

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
  std::vector<RunSummary> summaries;
  for (const auto& run : runs) summaries.push_back(summarize(run));
  for (size_t r : summary_row_order(summaries)) {
    os << "|";
    for (const auto& t : leading) os << " " << t.cells[r] << " |";
    for (size_t c : shown) {
      os << " " << format_summary_value(summaries[r].values[c], columns[c].precision) << " |";
    }
    os << "\n";
  }
}

}  // namespace kvsim
