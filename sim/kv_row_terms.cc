#include "sim/kv_row_terms.h"

#include <cstring>

#include "sim/base/attention.h"
#include "sim/base/errors.h"

namespace kvsim {

RowTerms row_terms(const HeadCache& cache, size_t row, const LayerData& raw, int kv_head) {
  const int d = cache.head_dim;
  const float* k = raw.key(kv_head, cache.positions[row]);
  const float* v = raw.value(kv_head, cache.positions[row]);
  const float* kh = cache.key_row(row);
  const float* vh = cache.value_row(row);
  float kd[kSumLanes] = {}, kn[kSumLanes] = {}, vd[kSumLanes] = {}, vn[kSumLanes] = {};
  int c = 0;
  for (; c + kSumLanes <= d; c += kSumLanes) {
#pragma omp simd
    for (int l = 0; l < kSumLanes; ++l) {
      const float dk = kh[c + l] - k[c + l], dv = vh[c + l] - v[c + l];
      kd[l] += dk * dk;
      kn[l] += k[c + l] * k[c + l];
      vd[l] += dv * dv;
      vn[l] += v[c + l] * v[c + l];
    }
  }
  RowTerms t{reduce_lanes(kd), reduce_lanes(kn), reduce_lanes(vd), reduce_lanes(vn)};
  for (; c < d; ++c) {
    const float dk = kh[c] - k[c], dv = vh[c] - v[c];
    t.key_diff += dk * dk, t.key_norm += k[c] * k[c];
    t.value_diff += dv * dv, t.value_norm += v[c] * v[c];
  }
  return t;
}

void RowTermsLedger::removed(std::span<const int32_t> sorted_positions) {
  if (sorted_positions.empty()) return;
  size_t out = 0, next = 0;
  for (size_t i = 0; i < positions_.size(); ++i) {
    while (next < sorted_positions.size() && sorted_positions[next] < positions_[i]) ++next;
    if (next < sorted_positions.size() && sorted_positions[next] == positions_[i]) {
      inexact_keys_ -= exact_[i] & 1 ? 0 : 1;
      inexact_values_ -= exact_[i] & 2 ? 0 : 1;
      continue;
    }
    positions_[out] = positions_[i], terms_[out] = terms_[i], exact_[out] = exact_[i];
    ++out;
  }
  positions_.resize(out), terms_.resize(out), exact_.resize(out);
}

void RowTermsLedger::extend(const HeadCache& cache, size_t final_rows, const LayerData& raw,
                            int kv_head) {
  KVSIM_CHECK_MSG(
      final_rows <= cache.size() && final_rows >= positions_.size() &&
          (positions_.empty() || cache.positions[positions_.size() - 1] == positions_.back()),
      "a store changed rows it had declared final");
  const size_t bytes = sizeof(float) * cache.head_dim;
  for (size_t row = positions_.size(); row < final_rows; ++row) {
    const int32_t pos = cache.positions[row];
    positions_.push_back(pos);
    terms_.push_back(row_terms(cache, row, raw, kv_head));
    const bool key = std::memcmp(cache.key_row(row), raw.key(kv_head, pos), bytes) == 0;
    const bool value = std::memcmp(cache.value_row(row), raw.value(kv_head, pos), bytes) == 0;
    exact_.push_back(static_cast<uint8_t>((key ? 1 : 0) | (value ? 2 : 0)));
    inexact_keys_ += key ? 0 : 1;
    inexact_values_ += value ? 0 : 1;
  }
}

KvErrorSums RowTermsLedger::sums(const HeadCache& cache, const LayerData& raw, int kv_head) const {
  KvErrorSums s;
  for (const RowTerms& t : terms_) s.add(t);
  for (size_t row = terms_.size(); row < cache.size(); ++row) {
    s.add(row_terms(cache, row, raw, kv_head));
  }
  return s;
}

namespace {

// Whether rows [from, n) of `cache` hold the trace's keys (`keys`) or values, bitwise.
bool rows_match_trace(const HeadCache& cache, size_t from, const LayerData& raw, int kv_head,
                      bool keys) {
  const size_t bytes = sizeof(float) * cache.head_dim;
  for (size_t row = from; row < cache.size(); ++row) {
    const int32_t pos = cache.positions[row];
    const float* stored = keys ? cache.key_row(row) : cache.value_row(row);
    const float* trace = keys ? raw.key(kv_head, pos) : raw.value(kv_head, pos);
    if (std::memcmp(stored, trace, bytes) != 0) return false;
  }
  return true;
}

}  // namespace

bool RowTermsLedger::keys_exact(const HeadCache& cache, const LayerData& raw, int kv_head) const {
  return inexact_keys_ == 0 && rows_match_trace(cache, positions_.size(), raw, kv_head, true);
}

bool RowTermsLedger::values_exact(const HeadCache& cache, const LayerData& raw, int kv_head) const {
  return inexact_values_ == 0 && rows_match_trace(cache, positions_.size(), raw, kv_head, false);
}

}  // namespace kvsim
