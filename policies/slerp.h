// MiniCache's SLERP merge of one token's pair of vectors (policies/minicache.cc): the math of
// sim/base/slerp.h, rounded to fp16 as MiniCache stores it. A header so that the GPU layer's
// tests check its reference against this very code.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "sim/base/fp16.h"
#include "sim/base/slerp.h"

namespace kvsim {

// Angular distance d = W/pi of x_a and x_b and their SLERP direction
// e = sin((1-t)W)/sin W * u_a + sin(tW)/sin W * u_b (normalised lerp when
// W < 1e-4), and the norms |x_a|, |x_b|, rounded once from double to fp16 as
// stored. Returns false when a vector is zero or
// the direction vanishes (the token is then retained). `unrounded`, if given,
// receives e before the fp16 rounding. Internal linkage, like slerp_unit_direction().
static inline bool minicache_slerp(const float* xa, const float* xb, int d, double t,
                                   float* direction, double& distance, float& norm_a, float& norm_b,
                                   std::vector<double>* unrounded = nullptr) {
  std::vector<double> e(static_cast<std::size_t>(d));
  double na = 0, nb = 0;
  const bool ok = slerp_unit_direction(xa, xb, d, t, e.data(), na, nb, distance);
  norm_a = round_double_to_half(na);
  norm_b = round_double_to_half(nb);
  if (!ok) return false;
  for (int c = 0; c < d; ++c) direction[c] = round_double_to_half(e[c]);
  if (unrounded != nullptr) *unrounded = std::move(e);
  return true;
}

}  // namespace kvsim
