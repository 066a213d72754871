// The SLERP math of MiniCache's merge (docs/policies.md): the one implementation, used by
// policies/minicache.cc (through policies/slerp.h) and by the GPU layer's CPU reference
// (gpu/cpu_reference_merge.cc), and mirrored by the CUDA kernel (gpu/slerp_kernels.cu).
#pragma once

#include <algorithm>
#include <cmath>
#include <numbers>

namespace kvsim {

// The angular distance and the unit SLERP direction of the pair (xa, xb) of `d` channels, in
// double, summed sequentially over the channels:
//   na = |xa|, nb = |xb|, W = acos(clamp(xa.xb / (na nb), -1, 1)), distance = W / pi,
//   (wa, wb) = (sin((1-t)W) / sin W, sin(tW) / sin W), or (1-t, t) when W < 1e-4,
//   e = wa xa / na + wb xb / nb,  unit[c] = e[c] / |e|.
// norm_a and norm_b are always written, distance whenever na, nb > 0. Returns false when a
// vector is zero or the direction vanishes (opposite vectors with t = 0.5); `unit` then holds
// nothing meaningful.
//
// `static` (internal linkage) on purpose: every includer compiles its own copy with its own
// floating-point options (gpu/cpu_reference*.cc use -ffp-contract=off, the policies do not),
// so that the linker can never substitute one translation unit's code for another's and the
// results of each caller stay what they are.
static inline bool slerp_unit_direction(const float* xa, const float* xb, int d, double t,
                                        double* unit, double& norm_a, double& norm_b,
                                        double& distance) {
  double na = 0, nb = 0, dot = 0;
  for (int c = 0; c < d; ++c) {
    na += static_cast<double>(xa[c]) * xa[c];
    nb += static_cast<double>(xb[c]) * xb[c];
    dot += static_cast<double>(xa[c]) * xb[c];
  }
  na = std::sqrt(na);
  nb = std::sqrt(nb);
  norm_a = na;
  norm_b = nb;
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
  for (int c = 0; c < d; ++c) {
    unit[c] = wa * xa[c] / na + wb * xb[c] / nb;
    n += unit[c] * unit[c];
  }
  n = std::sqrt(n);
  if (n == 0) return false;  // opposite vectors with t = 0.5: no direction
  for (int c = 0; c < d; ++c) unit[c] /= n;
  return true;
}

}  // namespace kvsim
