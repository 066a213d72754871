// Renders the results file's schema (results_tables(), sweep_tables()) as the
// Markdown tables of docs/results-format.md (`kvsim schema --markdown`;
// tests/schema_docs.py checks the doc against it and rewrites it).
#pragma once

#include <string>
#include <vector>

#include "sim/schema.h"

namespace kvsim {

// Every table of a results file: those of `kvsim replay`, then a sweep's.
std::vector<TableDoc> all_tables();

// One block per table, between the markers <!-- schema:KEY --> and
// <!-- /schema:KEY -->: a Markdown table of column, type, unit and meaning.
std::string table_markdown(const TableDoc& table);
std::string schema_markdown();

}  // namespace kvsim
