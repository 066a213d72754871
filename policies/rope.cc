#include "policies/rope.h"

#include <cmath>

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

void Rope::apply(float* x, int64_t position, bool inverse) const {
  const int half = rotary_dim_ / 2;
  const auto p = static_cast<float>(position);
  for (int i = 0; i < half; ++i) {
    const float angle = p * inv_freq_[i];  // float32, as the model computed it
    const double c = std::cos(static_cast<double>(angle));
    const double s =
        inverse ? -std::sin(static_cast<double>(angle)) : std::sin(static_cast<double>(angle));
    const int a = interleaved_ ? 2 * i : i;
    const int b = interleaved_ ? 2 * i + 1 : i + half;
    const double xa = x[a], xb = x[b];
    x[a] = static_cast<float>(xa * c - xb * s);
    x[b] = static_cast<float>(xb * c + xa * s);
  }
}

}  // namespace kvsim
