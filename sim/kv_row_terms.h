// The K/V reconstruction error of a cache (KvRecord's key_err and value_err), from per-row
// terms: a row's squared difference to the trace and the trace row's squared norm, K and V.
// For a store that only appends rows (StoreStage::rewrites_rows() false), RowTermsLedger keeps
// the terms of each (layer, kv head) cache from the rows' arrival, so that a measured step sums
// n terms instead of reading 4n rows; the sums are the same, bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "sim/base/head_cache.h"
#include "sim/base/trace_types.h"

namespace kvsim {

// One cached row against the trace's row at its position, each sum in float lanes in the fixed
// order of sim/base/attention.h.
struct RowTerms {
  float key_diff = 0, key_norm = 0, value_diff = 0, value_norm = 0;
};

// The terms of cache row `row` of kv head `kv_head`.
RowTerms row_terms(const HeadCache& cache, size_t row, const LayerData& raw, int kv_head);

// The sums over rows, in row order, in double.
struct KvErrorSums {
  double key_diff = 0, key_norm = 0, value_diff = 0, value_norm = 0;
  void add(const RowTerms& t) {
    key_diff += t.key_diff, key_norm += t.key_norm;
    value_diff += t.value_diff, value_norm += t.value_norm;
  }
};

// Per row terms of one append-only cache, and whether each row's key is bitwise the trace's.
class RowTermsLedger {
 public:
  // The engine removed rows of these positions (ascending) from the cache.
  void removed(std::span<const int32_t> sorted_positions);
  // The store appended rows to `cache` (rows up to size() unchanged): adds their terms.
  void appended(const HeadCache& cache, const LayerData& raw, int kv_head);
  KvErrorSums sums() const;
  // Every cached key is bitwise the trace's key at its position.
  bool keys_exact() const { return inexact_keys_ == 0; }
  // Every cached value is bitwise the trace's value at its position.
  bool values_exact() const { return inexact_values_ == 0; }
  size_t size() const { return positions_.size(); }

 private:
  std::vector<int32_t> positions_;
  std::vector<RowTerms> terms_;
  std::vector<uint8_t> exact_;  // bit 0: the key is the trace's, bit 1: the value
  size_t inexact_keys_ = 0, inexact_values_ = 0;
};

}  // namespace kvsim
