// The pre-RoPE mode (methods.md, "Pre-RoPE mode"): traces hold post-RoPE keys; a method that
// quantizes before RoPE (KVQuant, SKVQ's official code) undoes the rotation at the key's
// position, quantizes, and re-applies it to the dequantized key. ExpectedAttention takes its
// query statistics before RoPE and averages RoPE over future positions. Angles are computed as
// Hugging Face does: inv_freq = 1 / theta^(2i/r) in float32, divided by a linear factor, and
// angle = float32(position) * inv_freq in float32; cos and sin of that float angle are taken in
// double, and the rotation is applied in double and rounded once to float32.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/base/trace_types.h"

namespace kvsim {

// The mean of R_p over a range of positions (ExpectedAttention's Rbar): per channel pair the
// mean cos and the mean sin, applied like a rotation (it is none: it shrinks vectors).
class MeanRotation {
 public:
  // x <- Rbar x, in place, over head_dim channels (the channels past rotary_dim stay).
  void apply(double* x) const;

 private:
  friend class Rope;
  int rotary_dim_ = 0;
  bool interleaved_ = false;
  std::vector<double> cos_, sin_;  // [rotary_dim / 2]
};

class Rope {
 public:
  // The rotation of stored layer `slot`: base, linear factor, rotary dim and layout from the
  // trace (format v2), or their v1 defaults. Throws ConfigError for a RoPE type it cannot
  // invert exactly (llama3, yarn, dynamic, longrope, ...), naming it.
  static Rope for_slot(const TraceMeta& meta, int slot);
  // The rotation itself (tests, and a trace-independent caller).
  Rope(int head_dim, double theta, double factor, int rotary_dim, bool interleaved);

  // x <- R_p x (forward) or R_p^-1 x (inverse), in place, over head_dim channels.
  void apply(float* x, int64_t position, bool inverse) const;
  // out <- R_p x or R_p^-1 x in double, not rounded (apply() is this rounded to float32).
  void rotate(const float* x, double* out, int64_t position, bool inverse) const;
  // The mean of R_p over positions first .. first + count - 1 (count >= 1).
  MeanRotation mean_rotation(int64_t first, int64_t count) const;
  bool identity() const { return rotary_dim_ == 0; }

 private:
  int head_dim_ = 0, rotary_dim_ = 0;
  bool interleaved_ = false;
  std::vector<float> inv_freq_;  // [rotary_dim / 2]

  float angle(int i, int64_t position) const;
  template <class Out>
  void rotate_pairs(const float* x, Out* out, int64_t position, bool inverse) const;
};

}  // namespace kvsim
