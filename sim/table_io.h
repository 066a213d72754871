// Writes schema tables (sim/schema.h) into HDF5 groups: one 1-D dataset per
// column with the attributes `unit` and `doc`, and the group's attribute
// `columns` listing the columns in schema order (the Python loader's order).
#pragma once

#include <string>
#include <vector>

#include "sim/base/h5.h"
#include "sim/schema.h"

namespace kvsim {

// The dataset of one column, described by `doc` (written as `unit` and `doc`).
template <typename T>
void write_column(hid_t group, const ColumnDoc& doc, const std::vector<T>& values) {
  h5::write_vector(group, doc.name, values);
  h5::Handle dataset = h5::open_dataset(group, doc.name, "results");
  h5::write_attr(dataset.get(), "unit", doc.unit);
  h5::write_attr(dataset.get(), "doc", doc.doc);
}

// Appends `names` to the group's attribute `columns` (created when missing).
inline void append_column_names(hid_t group, const std::vector<std::string>& names) {
  std::vector<std::string> all;
  if (h5::has_attr(group, "columns")) all = h5::read_attr_strings(group, "columns", "results");
  all.insert(all.end(), names.begin(), names.end());
  h5::write_attr(group, "columns", all);
}

// Writes every column of `rows` into `group` and appends their names to `columns`.
template <typename Row>
void write_columns(hid_t group, const std::vector<Row>& rows, Columns<Row> columns) {
  std::vector<std::string> names;
  for (const Column<Row>& column : columns) {
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(std::declval<const Row&>().*member)>;
          std::vector<T> values;
          values.reserve(rows.size());
          for (const Row& row : rows) values.push_back(row.*member);
          write_column(group, {column.name, column.type(), column.unit, column.doc}, values);
        },
        column.member);
    names.push_back(column.name);
  }
  append_column_names(group, names);
}

}  // namespace kvsim
