// The minimal RoPE maths ExpectedAttention needs (half layout: channel pairs
// (i, i + d/2), transformers' rotate_half), in one place. Angles as Hugging Face
// computes them: inv_freq = 1 / theta^(2i/d) in float32, angle = float32(position)
// * inv_freq in float32; cos and sin of it in double.
// TODO(merge): the pre-RoPE mode's policies/rope.h (Rope: per-layer bases,
// linear factors, rotary dim, interleaved layout from trace format v2)
// supersedes this; ExpectedAttention should then take Rope::for_slot().
#pragma once

#include <cmath>
#include <vector>

namespace kvsim::rope {

// inv_freq[i], i < d/2, in float32 as transformers computes it.
inline std::vector<float> inverse_frequencies(int head_dim, double theta) {
  std::vector<float> out;
  const auto base = static_cast<float>(theta);
  for (int i = 0; i < head_dim / 2; ++i) {
    out.push_back(1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(head_dim)));
  }
  return out;
}

// The rotation angle of pair i at `position` (float32, as the model computed it).
inline double angle(const std::vector<float>& inv_freq, int i, long long position) {
  return static_cast<double>(static_cast<float>(position) * inv_freq[i]);
}

// out = R(position) x, or R(position)^-1 x when `inverse`, in double.
inline void rotate(const float* x, double* out, const std::vector<float>& inv_freq,
                   long long position, bool inverse) {
  const int half = static_cast<int>(inv_freq.size());
  for (int i = 0; i < half; ++i) {
    const double a = angle(inv_freq, i, position);
    const double c = std::cos(a), s = inverse ? -std::sin(a) : std::sin(a);
    const double xa = x[i], xb = x[i + half];
    out[i] = xa * c - xb * s;
    out[i + half] = xb * c + xa * s;
  }
}

// The mean rotation over positions first .. first + count - 1, per pair i:
// (mean cos, mean sin), so that Rbar x = (x_a c - x_b s, x_b c + x_a s).
inline void mean_rotation(const std::vector<float>& inv_freq, long long first, long long count,
                          std::vector<double>& mean_cos, std::vector<double>& mean_sin) {
  const size_t half = inv_freq.size();
  mean_cos.assign(half, 0.0);
  mean_sin.assign(half, 0.0);
  for (long long j = 0; j < count; ++j) {
    for (size_t i = 0; i < half; ++i) {
      const double a = angle(inv_freq, static_cast<int>(i), first + j);
      mean_cos[i] += std::cos(a);
      mean_sin[i] += std::sin(a);
    }
  }
  for (size_t i = 0; i < half; ++i) {
    mean_cos[i] /= static_cast<double>(count);
    mean_sin[i] /= static_cast<double>(count);
  }
}

}  // namespace kvsim::rope
