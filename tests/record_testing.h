// Test helpers driven by the record schema (sim/records.h): every column is
// compared or filled, so a new column is covered without touching the tests.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "sim/engine.h"

namespace kvsim::testing {

// Equal bit for bit (floats by their bytes: -0 != +0, NaN == same NaN).
template <typename T>
bool same_bits(const T& a, const T& b) {
  if constexpr (std::is_arithmetic_v<T>) {
    return std::memcmp(&a, &b, sizeof(T)) == 0;
  } else {
    return a == b;
  }
}

// Expects `a` and `b` to hold the same rows, equal bit for bit in every column;
// reports the first few differences by table, row and column.
template <typename Record>
void expect_same_rows(const std::vector<Record>& a, const std::vector<Record>& b,
                      Columns<Record> columns, const std::string& table) {
  ASSERT_EQ(a.size(), b.size()) << table << ": row counts differ";
  int reported = 0;
  for (size_t i = 0; i < a.size() && reported < 5; ++i) {
    for (const Column<Record>& c : columns) {
      std::visit(
          [&](auto member) {
            if (!same_bits(a[i].*member, b[i].*member)) {
              ADD_FAILURE() << table << " row " << i << " column " << c.name << ": " << a[i].*member
                            << " != " << b[i].*member;
              ++reported;
            }
          },
          c.member);
    }
  }
}

// Records (every column of steps and kv) and counters equal bit for bit.
inline void expect_same_records(const RunResult& a, const RunResult& b) {
  expect_same_rows<StepRecord>(a.steps, b.steps, kStepColumns, "steps");
  expect_same_rows<KvRecord>(a.kv, b.kv, kKvColumns, "kv");
  EXPECT_EQ(a.counters, b.counters);
}

// A record whose every cell is set from (salt, row, column index), distinct
// across columns and rows, with high int64 bits and fractional floats.
template <typename Record>
Record sample_record(Columns<Record> columns, int salt, int row) {
  Record r{};
  for (size_t k = 0; k < columns.size(); ++k) {
    visit_cell(columns[k], r, [&](auto& cell) {
      using T = std::remove_cvref_t<decltype(cell)>;
      const int64_t base = 1000 * salt + 37 * row + static_cast<int64_t>(k);
      if constexpr (std::is_same_v<T, int64_t>) {
        cell = (int64_t{1} << 40) + base;
      } else if constexpr (std::is_integral_v<T>) {
        cell = static_cast<T>(base);
      } else if constexpr (std::is_floating_point_v<T>) {
        cell = static_cast<T>(base) / T(7);
      } else {
        cell = "s" + std::to_string(base);
      }
    });
  }
  return r;
}

}  // namespace kvsim::testing
