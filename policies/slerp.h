// MiniCache's SLERP merge of one token's pair of vectors (policies/minicache.cc),
// in a header so that the GPU kernel's tests check against this very code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numbers>
#include <vector>

#include "sim/base/fp16.h"

namespace kvsim {

// Angular distance d = W/pi of x_a and x_b and their SLERP direction
// e = sin((1-t)W)/sin W * u_a + sin(tW)/sin W * u_b (normalised lerp when
// W < 1e-4), rounded to fp16 as stored. Returns false when a vector is zero or
// the direction vanishes (the token is then retained). `unrounded`, if given,
// receives e before the fp16 rounding.
inline bool minicache_slerp(const float* xa, const float* xb, int d, double t, float* direction,
                            double& distance, float& norm_a, float& norm_b,
                            std::vector<double>* unrounded = nullptr) {
  double na = 0, nb = 0, dot = 0;
  for (int c = 0; c < d; ++c) {
    na += static_cast<double>(xa[c]) * xa[c];
    nb += static_cast<double>(xb[c]) * xb[c];
    dot += static_cast<double>(xa[c]) * xb[c];
  }
  na = std::sqrt(na);
  nb = std::sqrt(nb);
  norm_a = static_cast<float>(na);
  norm_b = static_cast<float>(nb);
  if (na == 0 || nb == 0) return false;
  const double cosw = std::clamp(dot / (na * nb), -1.0, 1.0);
  const double w = std::acos(cosw);
  distance = w / std::numbers::pi;
  double wa, wb;
  if (w < 1e-4) {  // SLERP degenerates: normalised linear interpolation
    wa = 1 - t;
    wb = t;
  } else {
    wa = std::sin((1 - t) * w) / std::sin(w);
    wb = std::sin(t * w) / std::sin(w);
  }
  double n = 0;
  std::vector<double> e(d);
  for (int c = 0; c < d; ++c) {
    e[c] = wa * xa[c] / na + wb * xb[c] / nb;
    n += e[c] * e[c];
  }
  n = std::sqrt(n);
  if (n == 0) return false;  // opposite vectors with t = 0.5: no direction
  for (int c = 0; c < d; ++c) direction[c] = round_to_half(static_cast<float>(e[c] / n));
  if (unrounded != nullptr) {
    unrounded->resize(static_cast<std::size_t>(d));
    for (int c = 0; c < d; ++c) (*unrounded)[c] = e[c] / n;
  }
  return true;
}

}  // namespace kvsim
