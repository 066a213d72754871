// Tables described as data. A results table is a row type and a list of
// columns: name, type (from the member it reads), unit, a one-line doc, and
// for the record tables how the summary treats the column. The engine fills
// the rows; the results writer, the checkpoint format, the CLI summary table,
// the Python loader (through the attributes written beside each column) and
// docs/results-format.md (`kvsim schema --markdown`) all read the columns from
// here, so a column is declared once. See docs/architecture.md, "Adding a metric".
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace kvsim {

// In the order of Column::member's alternatives.
enum class ColumnType { kInt32, kInt64, kFloat32, kFloat64, kString };
const char* column_type_name(ColumnType type);  // "int32", ..., "string" (as the docs write them)

// What /summary and /runs/NNNN/aggregates make of a record column.
enum class Summary {
  kNone,     // a key or a per-row count: not summarised
  kMean,     // `<name>_mean` in /summary (sum in record order / rows) and rows in aggregates
  kMeanP95,  // `<name>_mean` and `<name>_p95` of the sorted sample, and rows in aggregates
  kSum,      // `<name>` in /summary: summed over every row (memory tallies)
};

template <typename Row>
using ColumnMember =
    std::variant<int32_t Row::*, int64_t Row::*, float Row::*, double Row::*, std::string Row::*>;

template <typename Row>
struct Column {
  const char* name;
  ColumnMember<Row> member;
  const char* unit;  // "" when the value has no unit (indices, ratios, names)
  const char* doc;   // one line, Markdown
  Summary summary = Summary::kNone;
  // Header in the CLI summary table (`kvsim replay`, `kvsim sweep`); nullptr:
  // not shown. A kMeanP95 column shows "<label> mean" and "<label> p95".
  const char* label = nullptr;
  int precision = 4;  // significant digits in the CLI table

  constexpr ColumnType type() const { return static_cast<ColumnType>(member.index()); }
};

template <typename Row>
using Columns = std::span<const Column<Row>>;

// Calls fn(row.*member) with the member's own type (a reference into `row`).
template <typename Row, typename Fn>
decltype(auto) visit_cell(const Column<Row>& column, Row& row, Fn&& fn) {
  return std::visit([&](auto member) -> decltype(auto) { return fn(row.*member); }, column.member);
}
template <typename Row, typename Fn>
decltype(auto) visit_cell(const Column<Row>& column, const Row& row, Fn&& fn) {
  return std::visit([&](auto member) -> decltype(auto) { return fn(row.*member); }, column.member);
}

// A numeric cell as a double (the conversion /summary and the aggregates use).
template <typename Row>
double numeric_cell(const Column<Row>& column, const Row& row) {
  return visit_cell(column, row, [](const auto& value) -> double {
    if constexpr (std::is_arithmetic_v<std::decay_t<decltype(value)>>) {
      return static_cast<double>(value);
    } else {
      return 0.0;  // strings are never summarised
    }
  });
}

// Bytes of one row's cells, padded to the row's alignment: equal to sizeof(Row)
// when every member of a plain record has a column (checked by static_assert
// next to each record, so a member without a column does not compile).
template <typename Row, size_t N>
constexpr size_t padded_cell_bytes(const Column<Row> (&columns)[N]) {
  size_t bytes = 0;
  for (const auto& c : columns) {
    constexpr size_t kSizes[] = {4, 8, 4, 8, sizeof(std::string)};
    bytes += kSizes[c.member.index()];
  }
  return (bytes + alignof(Row) - 1) / alignof(Row) * alignof(Row);
}

// A column as documentation: what `kvsim schema` prints and the docs show.
struct ColumnDoc {
  std::string name;
  ColumnType type;
  std::string unit, doc;
};

template <typename Row>
std::vector<ColumnDoc> column_docs(Columns<Row> columns) {
  std::vector<ColumnDoc> out;
  for (const auto& c : columns) out.push_back({c.name, c.type(), c.unit, c.doc});
  return out;
}

// One table of the results file: where it lives, what one row is, its columns.
struct TableDoc {
  std::string key;    // marker name in the docs: <!-- schema:KEY -->
  std::string where;  // "/runs/NNNN/steps"
  std::string rows;   // "one row per (sequence, layer, query head, measured step)"
  std::vector<ColumnDoc> columns;
};

}  // namespace kvsim
