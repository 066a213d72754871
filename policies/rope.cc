#include "policies/rope.h"

#include <cmath>
#include <utility>

#include "sim/base/errors.h"

namespace kvsim {

Rope Rope::for_slot(const TraceMeta& meta, int slot) {
  const int d = meta.head_dim;
  if (meta.rope_type == "none") return Rope(d, 1.0, 1.0, 0, false);
  if (meta.rope_type != "default" && meta.rope_type != "linear") {
    throw ConfigError("pre-RoPE mode: the trace's rope_type '" + meta.rope_type +
                      "' is not supported (default, linear and none are: the scaled variants "
                      "change the rotation with the frequency or the length)");
  }
  const double theta =
      meta.rope_theta_by_slot.empty() ? meta.rope_theta : meta.rope_theta_by_slot.at(slot);
  const double factor = meta.rope_factor_by_slot.empty() ? 1.0 : meta.rope_factor_by_slot.at(slot);
  if (!(theta > 0)) throw ConfigError("pre-RoPE mode: the trace's rope_theta must be > 0");
  return Rope(d, theta, factor, meta.rotary_dim == 0 ? d : meta.rotary_dim,
              meta.rope_layout == "interleaved");
}

Rope::Rope(int head_dim, double theta, double factor, int rotary_dim, bool interleaved)
    : head_dim_(head_dim), rotary_dim_(rotary_dim), interleaved_(interleaved) {
  KVSIM_CHECK(rotary_dim % 2 == 0 && rotary_dim <= head_dim && theta > 0 && factor > 0);
  // HF: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), float32.
  const auto base = static_cast<float>(theta);
  for (int i = 0; i < rotary_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    const float inv = 1.0f / std::pow(base, exponent);
    inv_freq_.push_back(factor == 1.0 ? inv : inv / static_cast<float>(factor));
  }
}

namespace {

// For each rotating channel pair i, (a, b) by the layout: out_a = x_a c - x_b s and
// out_b = x_b c + x_a s in double, (c, s) = cos_sin(i). `out` may be `x`.
template <class In, class Out, class CosSin>
void turn_pairs(const In* x, Out* out, int rotary_dim, bool interleaved, CosSin cos_sin) {
  const int half = rotary_dim / 2;
  for (int i = 0; i < half; ++i) {
    const auto [c, s] = cos_sin(i);
    const int a = interleaved ? 2 * i : i;
    const int b = interleaved ? 2 * i + 1 : i + half;
    const double xa = x[a], xb = x[b];
    out[a] = static_cast<Out>(xa * c - xb * s);
    out[b] = static_cast<Out>(xb * c + xa * s);
  }
}

}  // namespace

float Rope::angle(int i, int64_t position) const {
  return static_cast<float>(position) * inv_freq_[i];  // float32, as the model computed it
}

template <class Out>
void Rope::rotate_pairs(const float* x, Out* out, int64_t position, bool inverse) const {
  turn_pairs(x, out, rotary_dim_, interleaved_, [&](int i) {
    const auto a = static_cast<double>(angle(i, position));
    return std::pair{std::cos(a), inverse ? -std::sin(a) : std::sin(a)};
  });
}

void Rope::apply(float* x, int64_t position, bool inverse) const {
  rotate_pairs(x, x, position, inverse);
}

void Rope::rotate(const float* x, double* out, int64_t position, bool inverse) const {
  for (int c = rotary_dim_; c < head_dim_; ++c) out[c] = x[c];
  rotate_pairs(x, out, position, inverse);
}

MeanRotation Rope::mean_rotation(int64_t first, int64_t count) const {
  KVSIM_CHECK(count >= 1);
  MeanRotation m;
  m.rotary_dim_ = rotary_dim_;
  m.interleaved_ = interleaved_;
  const size_t half = inv_freq_.size();
  m.cos_.assign(half, 0.0);
  m.sin_.assign(half, 0.0);
  for (int64_t j = 0; j < count; ++j) {
    for (size_t i = 0; i < half; ++i) {
      const auto a = static_cast<double>(angle(static_cast<int>(i), first + j));
      m.cos_[i] += std::cos(a);
      m.sin_[i] += std::sin(a);
    }
  }
  for (size_t i = 0; i < half; ++i) {
    m.cos_[i] /= static_cast<double>(count);
    m.sin_[i] /= static_cast<double>(count);
  }
  return m;
}

void MeanRotation::apply(double* x) const {
  turn_pairs(x, x, rotary_dim_, interleaved_, [&](int i) { return std::pair{cos_[i], sin_[i]}; });
}

}  // namespace kvsim
