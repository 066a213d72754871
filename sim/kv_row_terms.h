// The K/V reconstruction error of a cache (KvRecord's key_err and value_err), from per-row
// terms: a row's squared difference to the trace and the trace row's squared norm, K and V.
// RowTermsLedger keeps the terms of each (layer, kv head) cache's final rows (those the store
// will not change again, StoreStage::final_rows()) so that a measured step sums their terms
// instead of reading 4 rows each; the sums are the same, bit for bit.
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

// The terms of one cache's final rows (StoreStage::final_rows(): a prefix of the cache that no
// later event changes), and whether each of their keys and values is bitwise the trace's; the
// other rows are recomputed when asked.
class RowTermsLedger {
 public:
  // The engine removed rows of these positions (ascending) from the cache.
  void removed(std::span<const int32_t> sorted_positions);
  // Rows [size(), final_rows) of `cache` are final now: adds their terms.
  void extend(const HeadCache& cache, size_t final_rows, const LayerData& raw, int kv_head);
  // The sums over every row of `cache` in row order: the kept terms, then the other rows'.
  KvErrorSums sums(const HeadCache& cache, const LayerData& raw, int kv_head) const;
  // Every cached key (value) is bitwise the trace's at its position.
  bool keys_exact(const HeadCache& cache, const LayerData& raw, int kv_head) const;
  bool values_exact(const HeadCache& cache, const LayerData& raw, int kv_head) const;
  size_t size() const { return positions_.size(); }

 private:
  std::vector<int32_t> positions_;
  std::vector<RowTerms> terms_;
  std::vector<uint8_t> exact_;  // bit 0: the key is the trace's, bit 1: the value
  size_t inexact_keys_ = 0, inexact_values_ = 0;
};

}  // namespace kvsim
