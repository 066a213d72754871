#include "sim/schema_doc.h"

#include <sstream>

#include "sim/results.h"
#include "sim/sweep_results.h"

namespace kvsim {

const char* column_type_name(ColumnType type) {
  // In the order of ColumnType (and of Column::member's alternatives).
  static constexpr const char* kNames[] = {"int32", "int64", "float32", "float64", "string"};
  return kNames[static_cast<size_t>(type)];
}

std::vector<TableDoc> all_tables() {
  std::vector<TableDoc> tables = results_tables();
  for (auto& t : sweep_tables()) tables.push_back(std::move(t));
  return tables;
}

std::string table_markdown(const TableDoc& table) {
  std::ostringstream out;
  out << "<!-- schema:" << table.key << " -->\n";
  out << "`" << table.where << "`: " << table.rows << ".\n\n";
  out << "| column | type | unit | meaning |\n|---|---|---|---|\n";
  for (const ColumnDoc& c : table.columns) {
    out << "| `" << c.name << "` | " << column_type_name(c.type) << " | " << c.unit << " | "
        << c.doc << " |\n";
  }
  out << "<!-- /schema:" << table.key << " -->\n";
  return out.str();
}

std::string schema_markdown() {
  std::string out;
  for (const TableDoc& t : all_tables()) {
    if (!out.empty()) out += '\n';
    out += table_markdown(t);
  }
  return out;
}

}  // namespace kvsim
