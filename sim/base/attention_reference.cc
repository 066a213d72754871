// The double-precision attention reference (declared in sim/base/attention.h) that the CPU
// kernels' tests and the GPU layer's reference (gpu/cpu_reference.cc) are measured against.
// Compiled with -ffp-contract=off (sim/base/CMakeLists.txt): its expressions are evaluated as
// written on every machine, as the GPU layer's references are.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "sim/base/attention.h"

namespace kvsim::cpu_reference {

double attend(const float* q, const float* keys, const float* values, size_t n, int d, double scale,
              double* out) {
  std::vector<double> scores(n);
  double max_score = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) {
    const float* key = keys + i * static_cast<size_t>(d);
    double dot = 0.0;
    for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * key[c];
    scores[i] = scale * dot;
    max_score = std::max(max_score, scores[i]);
  }
  std::fill(out, out + d, 0.0);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double p = std::exp(scores[i] - max_score);  // in (0, 1], 1 at the maximum
    sum += p;
    const float* value = values + i * static_cast<size_t>(d);
    for (int c = 0; c < d; ++c) out[c] += p * value[c];
  }
  for (int c = 0; c < d; ++c) out[c] /= sum;
  return max_score + std::log(sum);  // sum >= 1: no log(0)
}

}  // namespace kvsim::cpu_reference
