// The tables a sweep adds to the results file (write_sweep_results, declared in
// sim/sweep.h): their columns, for `kvsim schema` and docs/results-format.md.
#pragma once

#include <vector>

#include "sim/schema.h"

namespace kvsim {

std::vector<TableDoc> sweep_tables();

}  // namespace kvsim
