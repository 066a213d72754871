#include "sim/base/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "sim/base/errors.h"

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

// --- score_rows: tiles of keys, one SIMD lane per key --------------------------------------
// dot_queries() sums each product q[c] k[c] into lane c mod 16, then the 16 lanes in order
// (acc[0] + acc[1] + ... + acc[15]), then the tail: per key, 15 scalar additions in a
// dependent chain. The tile kernel below computes the same sums in the same order, bit for
// bit, but for kTileKeys keys at once, one key per lane of a transposed tile: lane sum l is
// accumulated over the channels c = l (mod 16) and added to the running sum before lane l + 1
// starts, so the 15 horizontal additions become vector additions too.
constexpr int kTileKeys = 16;

// out[j * kTileKeys + kk] = q[j] . key kk, for a tile stored channel-major:
// tile[c * kTileKeys + kk] = key kk's channel c.
template <int NQ>
inline void tile_dots_portable(const float* q, int d, const float* tile, float* out);

#if defined(__AVX512F__)
// With AVX-512 the kernel below is written with intrinsics: GCC keeps the portable version's
// sum arrays on the stack, and this one runs ~10% faster (docs/performance.md). It performs the
// same operations in the same order -- every lane sum from +0, added to a running sum from +0
// -- so its scores are the portable kernel's, bit for bit (tests/test_attention.cc compares
// them with score_gathered()'s). Only whole 16-channel blocks; the tail goes the portable way.
template <int NQ>
inline void tile_dots(const float* q, int d, const float* tile, float* out) {
  if (d % kSumLanes != 0) return tile_dots_portable<NQ>(q, d, tile, out);
  const int blocks = d / kSumLanes;
  const __m512 zero = _mm512_setzero_ps();
  __m512 sum[NQ];
  for (int j = 0; j < NQ; ++j) sum[j] = zero;
  for (int l = 0; l < kSumLanes; ++l) {
    __m512 acc[NQ];
    for (int j = 0; j < NQ; ++j) acc[j] = zero;
    for (int b = 0; b < blocks; ++b) {
      const int c = b * kSumLanes + l;
      const __m512 key = _mm512_loadu_ps(tile + c * kTileKeys);
      for (int j = 0; j < NQ; ++j) {
        acc[j] = _mm512_add_ps(acc[j], _mm512_mul_ps(_mm512_set1_ps(q[j * d + c]), key));
      }
    }
    for (int j = 0; j < NQ; ++j) sum[j] = _mm512_add_ps(sum[j], acc[j]);
  }
  for (int j = 0; j < NQ; ++j) _mm512_storeu_ps(out + j * kTileKeys, sum[j]);
}
#else
template <int NQ>
inline void tile_dots(const float* q, int d, const float* tile, float* out) {
  tile_dots_portable<NQ>(q, d, tile, out);
}
#endif

template <int NQ>
inline void tile_dots_portable(const float* q, int d, const float* tile, float* out) {
  float sum[NQ][kTileKeys] = {};
  const int blocks = d / kSumLanes;
  for (int l = 0; l < kSumLanes; ++l) {
    float acc[NQ][kTileKeys] = {};
    for (int b = 0; b < blocks; ++b) {
      const int c = b * kSumLanes + l;
      const float* kc = tile + c * kTileKeys;
      for (int j = 0; j < NQ; ++j) {
        const float qc = q[j * d + c];
#pragma omp simd
        for (int kk = 0; kk < kTileKeys; ++kk) acc[j][kk] += qc * kc[kk];
      }
    }
    for (int j = 0; j < NQ; ++j) {
#pragma omp simd
      for (int kk = 0; kk < kTileKeys; ++kk) sum[j][kk] += acc[j][kk];
    }
  }
  for (int c = blocks * kSumLanes; c < d; ++c) {
    const float* kc = tile + c * kTileKeys;
    for (int j = 0; j < NQ; ++j) {
      const float qc = q[j * d + c];
#pragma omp simd
      for (int kk = 0; kk < kTileKeys; ++kk) sum[j][kk] += qc * kc[kk];
    }
  }
  for (int j = 0; j < NQ; ++j) {
    for (int kk = 0; kk < kTileKeys; ++kk) out[j * kTileKeys + kk] = sum[j][kk];
  }
}

inline void tile_dots_chunk(const float* q, int num_queries, int d, const float* tile, float* out) {
  switch (num_queries) {
    case 4:
      tile_dots<4>(q, d, tile, out);
      break;
    case 3:
      tile_dots<3>(q, d, tile, out);
      break;
    case 2:
      tile_dots<2>(q, d, tile, out);
      break;
    default:
      tile_dots<1>(q, d, tile, out);
      break;
  }
}

// Queries per tile_dots call: 4 x (16 running sums + 16 lane sums) fill 8 AVX-512 registers.
constexpr int kTileQueries = 4;

}  // namespace

namespace {

// Scores of the queries over one tile, written for the tile's keys in [first, first + n)
// (scores[j * n + i] for key first + i).
void score_one_tile(const float* q, int num_queries, int d, const float* tile, size_t tile_first,
                    size_t first, size_t n, float scale, float* scores) {
  float dots[kTileQueries * kTileKeys];
  const size_t lo = std::max(tile_first, first);
  const size_t hi = std::min(tile_first + kTileKeys, first + n);
  for (int j0 = 0; j0 < num_queries; j0 += kTileQueries) {
    const int nq = std::min(kTileQueries, num_queries - j0);
    tile_dots_chunk(q + static_cast<size_t>(j0) * d, nq, d, tile, dots);
    for (int j = 0; j < nq; ++j) {
      float* row = scores + static_cast<size_t>(j0 + j) * n - first;
      for (size_t i = lo; i < hi; ++i) row[i] = dots[j * kTileKeys + (i - tile_first)] * scale;
    }
  }
}

// Copies keys [0, width) (rows of d) into a channel-major tile; lanes past width keep zeros.
// Channel by channel: each tile row is one contiguous store, and the 16 key rows read stay in
// L1 (key by key, every store would touch another cache line).
void transpose_tile(const float* keys, int width, int d, float* tile) {
  if (width == kTileKeys) {
    for (int c = 0; c < d; ++c) {
      float* row = tile + c * kTileKeys;
#pragma omp simd
      for (int kk = 0; kk < kTileKeys; ++kk) row[kk] = keys[static_cast<size_t>(kk) * d + c];
    }
    return;
  }
  for (int kk = 0; kk < width; ++kk) {
    const float* key = keys + static_cast<size_t>(kk) * d;
    for (int c = 0; c < d; ++c) tile[c * kTileKeys + kk] = key[c];
  }
}

// Scores of keys [from, to) into rows of stride n (scores[j * n + i] for key first + i), from
// tiles that hold keys from `tiles_first` (a multiple of kTileKeys).
void score_tiled_span(const float* q, int num_queries, int d, const float* tiles,
                      size_t tiles_first, size_t from, size_t to, size_t first, size_t n,
                      float scale, float* scores) {
  for (size_t t0 = from / kTileKeys * kTileKeys; t0 < to; t0 += kTileKeys) {
    score_one_tile(q, num_queries, d, tiles + (t0 - tiles_first) * d, t0, first, n, scale, scores);
  }
}

}  // namespace

void score_rows(const float* q, int num_queries, const float* keys, size_t n, int d, float scale,
                float* scores, const KeyTiles* known) {
  size_t done = 0;
  if (known != nullptr) {
    KVSIM_CHECK(known->head_dim == d);
    done = std::min(n, known->num_keys / kTileKeys * kTileKeys);
    score_tiled_span(q, num_queries, d, known->data.data(), 0, 0, done, 0, n, scale, scores);
  }
  // The rest, a tile transposed at a time (a partial tile's lanes stay 0).
  thread_local std::vector<float> tile;
  tile.assign(static_cast<size_t>(d) * kTileKeys, 0.f);
  for (size_t i0 = done; i0 < n; i0 += kTileKeys) {
    const int width = static_cast<int>(std::min<size_t>(kTileKeys, n - i0));
    transpose_tile(keys + i0 * static_cast<size_t>(d), width, d, tile.data());
    score_one_tile(q, num_queries, d, tile.data(), i0, 0, n, scale, scores);
  }
}

KeyTiles::KeyTiles(const float* keys, size_t n, int d) : head_dim(d) { append(keys, n); }

void KeyTiles::append(const float* keys, size_t n) {
  const int d = head_dim;
  KVSIM_CHECK(num_keys % kTileKeys == 0);  // only the last tile may be partial
  data.resize((num_keys + n + kTileKeys - 1) / kTileKeys * kTileKeys * d, 0.f);
  for (size_t i0 = 0; i0 < n; i0 += kTileKeys) {
    const int width = static_cast<int>(std::min<size_t>(kTileKeys, n - i0));
    transpose_tile(keys + i0 * static_cast<size_t>(d), width, d, data.data() + (num_keys + i0) * d);
  }
  num_keys += n;
}

void KeyTiles::truncate(size_t n) {
  KVSIM_CHECK(n % kTileKeys == 0 && n <= num_keys);
  num_keys = n;
  data.resize(n * head_dim);
}

void score_tiles(const float* q, int num_queries, const KeyTiles& tiles, size_t first, size_t n,
                 float scale, float* scores) {
  if (n == 0) return;
  score_tiled_span(q, num_queries, tiles.head_dim, tiles.data.data(), 0, first, first + n, first, n,
                   scale, scores);
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

float max_value(const float* s, size_t n) {
  // 16 lanes through select_float(): GCC left the `omp simd reduction(max)` form scalar, and
  // it took as long as the exponentials. The maximum does not depend on the order.
  float lanes[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l) lanes[l] = s[0];
  size_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
#pragma omp simd
    for (int l = 0; l < kSumLanes; ++l) {
      lanes[l] = select_float(s[i + l] > lanes[l], s[i + l], lanes[l]);
    }
  }
  float mx = lanes[0];
  for (int l = 1; l < kSumLanes; ++l) mx = std::max(mx, lanes[l]);
  for (; i < n; ++i) mx = std::max(mx, s[i]);
  return mx;
}

size_t first_max_index(const float* s, size_t n) {
  if (n == 0) return 0;
  // Per lane, the largest value and its first index, then the lanes (the lowest index among
  // equal maxima), then the tail: what a left-to-right scan keeping the first maximum finds.
  float best[kSumLanes];
  int64_t where[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l)
    best[l] = -std::numeric_limits<float>::infinity(), where[l] = -1;
  size_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
#pragma omp simd
    for (int l = 0; l < kSumLanes; ++l) {
      const bool larger = s[i + l] > best[l];
      best[l] = select_float(larger, s[i + l], best[l]);
      where[l] = larger ? static_cast<int64_t>(i) + l : where[l];
    }
  }
  float top = -std::numeric_limits<float>::infinity();
  int64_t at = -1;
  for (int l = 0; l < kSumLanes; ++l) {
    if (where[l] >= 0 && (at < 0 || best[l] > top || (best[l] == top && where[l] < at))) {
      top = best[l], at = where[l];
    }
  }
  for (; i < n; ++i) {
    if (at < 0 || s[i] > top) top = s[i], at = static_cast<int64_t>(i);
  }
  // Only -inf or NaN scores: the first entry, as std::max_element gives.
  return at < 0 ? 0 : static_cast<size_t>(at);
}

namespace {

// sum_i e_i, e_i = fast_expf(in_i - shift), in lane_sum()'s order; with kStore each e_i is
// also written to out (which may be `in`). The whole blocks of kSumLanes go kExpBlocks at a
// time: a block's polynomial is a long chain of dependent operations, independent blocks let
// the core overlap them, and the lanes still take the blocks in order.
constexpr int kExpBlocks = 4;

template <bool kStore>
float exp_and_sum(const float* in, float* out, size_t n, float shift) {
  float lanes[kSumLanes] = {};
  size_t i = 0;
  for (; i + kExpBlocks * kSumLanes <= n; i += kExpBlocks * kSumLanes) {
    float e[kExpBlocks][kSumLanes];
    for (int b = 0; b < kExpBlocks; ++b) {
#pragma omp simd
      for (int l = 0; l < kSumLanes; ++l) e[b][l] = fast_expf(in[i + b * kSumLanes + l] - shift);
    }
    for (int b = 0; b < kExpBlocks; ++b) {
#pragma omp simd
      for (int l = 0; l < kSumLanes; ++l) {
        lanes[l] += e[b][l];
        if constexpr (kStore) out[i + b * kSumLanes + l] = e[b][l];
      }
    }
  }
  for (; i + kSumLanes <= n; i += kSumLanes) {
#pragma omp simd
    for (int l = 0; l < kSumLanes; ++l) {
      const float e = fast_expf(in[i + l] - shift);
      if constexpr (kStore) out[i + l] = e;
      lanes[l] += e;
    }
  }
  float sum = reduce_lanes(lanes);
  for (; i < n; ++i) {
    const float e = fast_expf(in[i] - shift);
    if constexpr (kStore) out[i] = e;
    sum += e;
  }
  return sum;
}

// p_i = e_i / sum in place (e_i from exp_and_sum); returns the log-sum-exp mx + log(sum).
double normalise(float* p, size_t n, float mx, float sum) {
  const float inv = 1.f / sum;
#pragma omp simd
  for (size_t k = 0; k < n; ++k) p[k] *= inv;
  return mx + std::log(static_cast<double>(sum));
}

}  // namespace

double softmax_with_max(float* s, size_t n, float mx) {
  if (n == 0) return -std::numeric_limits<double>::infinity();
  return normalise(s, n, mx, exp_and_sum<true>(s, s, n, mx));
}

float exp_inplace_sum(float* s, size_t n, float mx) { return exp_and_sum<true>(s, s, n, mx); }

double softmax_into(const float* s, float* p, size_t n) {
  if (n == 0) return -std::numeric_limits<double>::infinity();
  const float mx = max_value(s, n);
  return normalise(p, n, mx, exp_and_sum<true>(s, p, n, mx));
}

double softmax_inplace(float* s, size_t n) {
  if (n == 0) return -std::numeric_limits<double>::infinity();
  return softmax_with_max(s, n, max_value(s, n));
}

float exp_sum(const float* s, size_t n, float shift) {
  return exp_and_sum<false>(s, nullptr, n, shift);
}

void exp_sum_and_cross(const float* raw, const float* compressed, size_t n, float shift,
                       float* mass, float* cross) {
  float mass_lanes[kSumLanes] = {}, cross_lanes[kSumLanes] = {};
  size_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
#pragma omp simd
    for (int l = 0; l < kSumLanes; ++l) {
      const float p = fast_expf(raw[i + l] - shift);
      mass_lanes[l] += p;
      cross_lanes[l] += p * (raw[i + l] - compressed[i + l]);
    }
  }
  float m = reduce_lanes(mass_lanes), c = reduce_lanes(cross_lanes);
  for (; i < n; ++i) {
    const float p = fast_expf(raw[i] - shift);
    m += p;
    c += p * (raw[i] - compressed[i]);
  }
  *mass = m;
  *cross = c;
}

namespace {

// Channels per register block of weighted_sum()'s 4 queries (4 x 64 sums: 16 AVX-512 registers).
constexpr int kBlock = 64;

// out[j, c0 + c] = sum_i probs[j * stride + i] v[i, c0 + c] for NQ queries and W channels, over
// rows [i0, i1) in order, with the NQ x W sums in registers, continuing the sums already in
// `out` (from_zero: starting from 0). Storing a float sum and loading it back is exact, so a
// row's sum split at any i is its sum in one pass.
template <int NQ, int W>
inline void weighted_block_range(const float* probs, size_t stride, size_t i0, size_t i1,
                                 const float* values, int d, int c0, float* out, bool from_zero) {
  float acc[NQ][W];
  for (int j = 0; j < NQ; ++j) {
    for (int c = 0; c < W; ++c) {
      acc[j][c] = from_zero ? 0.f : out[static_cast<size_t>(j) * d + c0 + c];
    }
  }
  for (size_t i = i0; i < i1; ++i) {
    const float* v = values + i * static_cast<size_t>(d) + c0;
    for (int j = 0; j < NQ; ++j) {
      const float w = probs[static_cast<size_t>(j) * stride + i];
#pragma omp simd
      for (int c = 0; c < W; ++c) acc[j][c] += w * v[c];
    }
  }
  for (int j = 0; j < NQ; ++j) {
    for (int c = 0; c < W; ++c) out[static_cast<size_t>(j) * d + c0 + c] = acc[j][c];
  }
}

// NQ queries over rows [i0, i1), every channel.
template <int NQ, int kWide>
void weighted_range_queries(const float* probs, size_t stride, size_t i0, size_t i1,
                            const float* values, int d, float* out, bool from_zero) {
  int c0 = 0;
  for (; c0 + kWide <= d; c0 += kWide) {
    weighted_block_range<NQ, kWide>(probs, stride, i0, i1, values, d, c0, out, from_zero);
  }
  for (; c0 + 16 <= d; c0 += 16) {
    weighted_block_range<NQ, 16>(probs, stride, i0, i1, values, d, c0, out, from_zero);
  }
  for (; c0 < d; ++c0) {
    weighted_block_range<NQ, 1>(probs, stride, i0, i1, values, d, c0, out, from_zero);
  }
}

// A block of NQ queries: the rows they all have together, then each query's own rest.
template <int NQ, int kWide>
void weighted_ragged_block(const float* probs, size_t stride, const size_t* lengths,
                           const float* values, int d, float* out) {
  const size_t common = *std::min_element(lengths, lengths + NQ);
  weighted_range_queries<NQ, kWide>(probs, stride, 0, common, values, d, out, true);
  for (int j = 0; j < NQ; ++j) {
    if (lengths[j] == common) continue;
    weighted_range_queries<1, kBlock>(probs + static_cast<size_t>(j) * stride, stride, common,
                                      lengths[j], values, d, out + static_cast<size_t>(j) * d,
                                      false);
  }
}

}  // namespace

void weighted_sum_rows(const float* probs, size_t stride, int num_queries, const size_t* lengths,
                       const float* values, int d, float* out) {
  // 8 queries x 32 channels of sums fill 16 AVX-512 registers: each value row loaded serves 8
  // queries (a block of measured steps of one kv head), where weighted_sum's 4 x 64 serve 4.
  int j0 = 0;
  for (; j0 + 8 <= num_queries; j0 += 8) {
    weighted_ragged_block<8, 32>(probs + j0 * stride, stride, lengths + j0, values, d,
                                 out + static_cast<size_t>(j0) * d);
  }
  for (; j0 + 4 <= num_queries; j0 += 4) {
    weighted_ragged_block<4, kBlock>(probs + j0 * stride, stride, lengths + j0, values, d,
                                     out + static_cast<size_t>(j0) * d);
  }
  for (; j0 < num_queries; ++j0) {
    weighted_ragged_block<1, kBlock>(probs + j0 * stride, stride, lengths + j0, values, d,
                                     out + static_cast<size_t>(j0) * d);
  }
}

void weighted_sum(const float* probs, int num_queries, const float* values, size_t n, int d,
                  float* out) {
  // Each output element is the sum over rows i in order, as in the row-by-row loop; blocks of
  // queries and channels keep their sums in registers while the value rows stream by.
  int j0 = 0;
  for (; j0 + 4 <= num_queries; j0 += 4) {
    weighted_range_queries<4, kBlock>(probs + static_cast<size_t>(j0) * n, n, 0, n, values, d,
                                      out + static_cast<size_t>(j0) * d, true);
  }
  for (; j0 < num_queries; ++j0) {
    weighted_range_queries<1, kBlock>(probs + static_cast<size_t>(j0) * n, n, 0, n, values, d,
                                      out + static_cast<size_t>(j0) * d, true);
  }
}

}  // namespace kvsim
