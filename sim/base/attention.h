// CPU attention kernels of the replay hot path, and the double-precision reference
// (namespace cpu_reference) that their tests and the GPU layer's reference use.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <vector>

namespace kvsim {

// Keys laid out for score_tiles(): tiles of 16 keys, each channel-major (the 16 keys' channel c
// side by side), the last tile padded with zeros. Made once for keys that many queries score
// (every prompt row at prefill, every measured step of a layer); score_rows() makes a few
// tiles at a time. The scores are score_rows()'s, bit for bit.
// An allocator of cache-line-aligned blocks: a tile row is one 64-byte vector load, which a
// 16-byte-aligned block (what malloc gives) would split across two cache lines.
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const {
    return true;
  }
};

struct KeyTiles {
  static constexpr size_t kTileKeys = 16;
  explicit KeyTiles(int d) : head_dim(d) {}
  KeyTiles(const float* keys, size_t n, int d);  // keys: [n, d] contiguous rows
  // Appends n key rows; num_keys must be a multiple of kTileKeys.
  void append(const float* keys, size_t n);
  // Keeps the first n keys, n a multiple of kTileKeys.
  void truncate(size_t n);
  int head_dim;
  size_t num_keys = 0;
  std::vector<float, CacheLineAllocator<float>> data;
};

// scores[j * n + i] = scale * q[j] . k[i], for j < num_queries, i < n.
// q: [num_queries, d]; keys: [n, d] contiguous rows. `known`, when given, holds the first keys
// already tiled (its whole tiles must be bitwise keys' first rows; a cache keeps them for the
// rows no event changes any more), so only the rest are transposed.
void score_rows(const float* q, int num_queries, const float* keys, size_t n, int d, float scale,
                float* scores, const KeyTiles* known = nullptr);

// scores[j * n + i] = scale * q[j] . key (first + i) of `tiles`, for i < n.
void score_tiles(const float* q, int num_queries, const KeyTiles& tiles, size_t first, size_t n,
                 float scale, float* scores);

// Same as score_rows, with key rows gathered: key i is at keys_base + rows[i] * d.
void score_gathered(const float* q, int num_queries, const float* keys_base,
                    std::span<const int32_t> rows, int d, float scale, float* scores);

// e^x in float, written so that `omp simd` loops vectorise it (glibc's vector
// expf needs -ffast-math). Cody-Waite range reduction and the Cephes degree-6
// polynomial: relative error below 2e-7 on [-87, 88]; inputs are clamped there
// (e^-87 is below every probability that matters here).
// `when ? a : b` through an integer mask: GCC 12 (with -ftrapping-math, the default) does not
// if-convert the float selects of fast_expf's clamps, which kept its loops scalar.
inline float select_float(bool when, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(when);
  return std::bit_cast<float>((std::bit_cast<uint32_t>(a) & mask) |
                              (std::bit_cast<uint32_t>(b) & ~mask));
}

// e^x = 2^n e^r, r = x - n ln 2 (Cody-Waite, in two parts), for the integer n nearest to
// x / ln 2 (rounded half up); e^r from the Cephes polynomial.
inline float expf_from_rounding(float x, int32_t n) {
  const float nf = static_cast<float>(n);
  float r = x - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  return y * std::bit_cast<float>(static_cast<uint32_t>(n + 127) << 23);
}

// The clamps are std::max(x, -87) and std::min(x, 88) and the rounding is std::floor, written
// out so that the loops vectorise (std::floor does not without -fno-trapping-math); t lies in
// (-126, 128), where truncation and a correction is floor.
inline float fast_expf(float x) {
  x = select_float(x < -87.0f, -87.0f, x);
  x = select_float(88.0f < x, 88.0f, x);
  const float t = x * 1.44269504088896341f + 0.5f;
  const int32_t truncated = static_cast<int32_t>(t);
  return expf_from_rounding(x, truncated - (static_cast<float>(truncated) > t ? 1 : 0));
}

// Float sums in a fixed order on every machine (docs/replay.md, "Bit-identical
// results"): kSumLanes lanes, lane l summing the terms i = l mod kSumLanes of the whole
// blocks in order (a loop over l of independent lanes vectorises at any width), the
// lanes then summed pairwise by reduce_lanes(), then the tail in order. An `omp simd
// reduction` lets the compiler choose the order by the vector width instead.
constexpr int kSumLanes = 16;

// acc[0] + ... + acc[15] pairwise: (l += l + w) for w = 8, 4, 2, 1.
inline float reduce_lanes(float (&acc)[kSumLanes]) {
  for (int w = kSumLanes / 2; w > 0; w /= 2) {
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  }
  return acc[0];
}

// x[0] + ... + x[n-1] in that fixed order.
float lane_sum(const float* x, size_t n);

// In-place softmax of s[0..n); returns the log-sum-exp of the input.
double softmax_inplace(float* s, size_t n);
// The same out of place: p = softmax(s) (bit for bit a copy and softmax_inplace()).
double softmax_into(const float* s, float* p, size_t n);
// The same, given mx = max_value(s, n) (bit for bit softmax_inplace's result).
double softmax_with_max(float* s, size_t n, float mx);
// The first two passes of softmax_with_max(): s_i <- e^(s_i - mx), and returns their sum (in
// lane_sum()'s order). softmax_with_max() then multiplies by 1 / sum.
float exp_inplace_sum(float* s, size_t n, float mx);
// The largest of s[0..n), n > 0.
float max_value(const float* s, size_t n);
// The index of the first largest entry of s[0..n) (std::max_element's), vectorised.
size_t first_max_index(const float* s, size_t n);

// sum_i e^(s_i - shift) in lane_sum()'s order (fast_expf), without storing the terms.
float exp_sum(const float* s, size_t n, float shift);
// mass = sum_i p_i and cross = sum_i p_i (raw_i - compressed_i), p_i = e^(raw_i - shift), both
// in lane_sum()'s order: the kept mass and the KL's cross terms of a measured step.
void exp_sum_and_cross(const float* raw, const float* compressed, size_t n, float shift,
                       float* mass, float* cross);

// out[j] = sum_i probs[j * n + i] * values[i], values: [n, d], out: [num_queries, d].
void weighted_sum(const float* probs, int num_queries, const float* values, size_t n, int d,
                  float* out);
// The same for queries of different lengths: out[j] = sum_{i < lengths[j]} probs[j * stride +
// i] * values[i] (the queries of a block of measured steps share the value rows they have in
// common). Every output is weighted_sum()'s, bit for bit.
void weighted_sum_rows(const float* probs, size_t stride, int num_queries, const size_t* lengths,
                       const float* values, int d, float* out);

namespace cpu_reference {
// The double-precision attention reference (sim/base/attention_reference.cc), of one
// query over n keys: s_i = scale * q.k_i, out[d] = sum_i exp(s_i - max s) v_i / sum_i
// exp(s_i - max s) (accumulated in double, divided once); returns the log-sum-exp.
double attend(const float* q, const float* keys, const float* values, size_t n, int d, double scale,
              double* out);
}  // namespace cpu_reference

}  // namespace kvsim
