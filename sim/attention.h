// CPU attention kernels of the replay hot path. Each has a plain reference
// (namespace cpu_reference) that tests compare it against.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace kvsim {

// scores[j * n + i] = scale * q[j] . k[i], for j < num_queries, i < n.
// q: [num_queries, d]; keys: [n, d] contiguous rows.
void score_rows(const float* q, int num_queries, const float* keys, size_t n, int d, float scale,
                float* scores);

// Same, with key rows gathered: key i is at keys_base + rows[i] * d.
void score_gathered(const float* q, int num_queries, const float* keys_base,
                    std::span<const int32_t> rows, int d, float scale, float* scores);

// In-place softmax of s[0..n); returns the log-sum-exp of the input.
double softmax_inplace(float* s, size_t n);

// out[j] = sum_i probs[j * n + i] * values[i], values: [n, d], out: [num_queries, d].
void weighted_sum(const float* probs, int num_queries, const float* values, size_t n, int d,
                  float* out);

namespace cpu_reference {
// Straightforward double-precision attention of one query over n keys:
// returns the log-sum-exp and writes out[d].
double attend(const float* q, const float* keys, const float* values, size_t n, int d,
              double scale, double* out);
}  // namespace cpu_reference

}  // namespace kvsim
