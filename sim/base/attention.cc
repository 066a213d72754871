#include "sim/base/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvsim {

namespace {

// Dot products of NQ queries with one key, sharing the key's loads. Each query
// accumulates in a 16-lane block (one AVX-512 or two AVX2 registers), summed at
// the end, so the compiler emits packed FMAs without -ffast-math.
template <int NQ>
inline void dot_queries(const float* q, int d, const float* key, float* out) {
  constexpr int kLanes = 16;
  float acc[NQ][kLanes] = {};
  int c = 0;
  for (; c + kLanes <= d; c += kLanes) {
    for (int j = 0; j < NQ; ++j) {
      const float* qj = q + j * d + c;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) acc[j][l] += qj[l] * key[c + l];
    }
  }
  for (int j = 0; j < NQ; ++j) {
    float sum = 0.f;
    for (int l = 0; l < kLanes; ++l) sum += acc[j][l];
    for (int t = c; t < d; ++t) sum += q[j * d + t] * key[t];
    out[j] = sum;
  }
}

// Up to kChunk queries share each key's loads (the replay is bound by reading
// keys: a GQA group, or several prefill rows, read every key once).
constexpr int kChunk = 8;

inline void dot_chunk(const float* q, int num_queries, int d, const float* key, float* out) {
  switch (num_queries) {
    case 8:
      dot_queries<8>(q, d, key, out);
      break;
    case 7:
      dot_queries<7>(q, d, key, out);
      break;
    case 6:
      dot_queries<6>(q, d, key, out);
      break;
    case 5:
      dot_queries<5>(q, d, key, out);
      break;
    case 4:
      dot_queries<4>(q, d, key, out);
      break;
    case 3:
      dot_queries<3>(q, d, key, out);
      break;
    case 2:
      dot_queries<2>(q, d, key, out);
      break;
    default:
      dot_queries<1>(q, d, key, out);
      break;
  }
}

template <typename KeyAt>
void score_impl(const float* q, int num_queries, size_t n, int d, float scale, float* scores,
                KeyAt key_at) {
  for (int j0 = 0; j0 < num_queries; j0 += kChunk) {
    const int nq = std::min(kChunk, num_queries - j0);
    const float* qb = q + static_cast<size_t>(j0) * d;
    float acc[kChunk];
    for (size_t i = 0; i < n; ++i) {
      dot_chunk(qb, nq, d, key_at(i), acc);
      for (int j = 0; j < nq; ++j) scores[(j0 + j) * n + i] = acc[j] * scale;
    }
  }
}

}  // namespace

void score_rows(const float* q, int num_queries, const float* keys, size_t n, int d, float scale,
                float* scores) {
  score_impl(q, num_queries, n, d, scale, scores,
             [&](size_t i) { return keys + i * static_cast<size_t>(d); });
}

void score_gathered(const float* q, int num_queries, const float* keys_base,
                    std::span<const int32_t> rows, int d, float scale, float* scores) {
  score_impl(q, num_queries, rows.size(), d, scale, scores,
             [&](size_t i) { return keys_base + static_cast<size_t>(rows[i]) * d; });
}

float lane_sum(const float* x, size_t n) {
  float lanes[kSumLanes] = {};
  size_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
#pragma omp simd
    for (int l = 0; l < kSumLanes; ++l) lanes[l] += x[i + l];
  }
  float sum = reduce_lanes(lanes);
  for (; i < n; ++i) sum += x[i];
  return sum;
}

double softmax_inplace(float* s, size_t n) {
  if (n == 0) return -std::numeric_limits<double>::infinity();
  float mx = s[0];
#pragma omp simd reduction(max : mx)
  for (size_t i = 1; i < n; ++i) mx = std::max(mx, s[i]);
    // Two passes: the exponentials vectorise alone, and lane_sum() fixes the order.
#pragma omp simd
  for (size_t i = 0; i < n; ++i) s[i] = fast_expf(s[i] - mx);
  const float sum = lane_sum(s, n);
  const float inv = 1.f / sum;
#pragma omp simd
  for (size_t i = 0; i < n; ++i) s[i] *= inv;
  return mx + std::log(static_cast<double>(sum));
}

void weighted_sum(const float* probs, int num_queries, const float* values, size_t n, int d,
                  float* out) {
  std::fill(out, out + static_cast<size_t>(num_queries) * d, 0.f);
  // Rows outer, queries inner: each value row is read once for the whole GQA
  // group while the group's outputs stay in L1.
  for (size_t i = 0; i < n; ++i) {
    const float* v = values + i * static_cast<size_t>(d);
    for (int j = 0; j < num_queries; ++j) {
      const float w = probs[static_cast<size_t>(j) * n + i];
      float* o = out + static_cast<size_t>(j) * d;
#pragma omp simd
      for (int c = 0; c < d; ++c) o[c] += w * v[c];
    }
  }
}

}  // namespace kvsim
