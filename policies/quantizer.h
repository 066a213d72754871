// The asymmetric min/max round-to-nearest quantizer of methods.md, and the two
// layouts built on it: per-token groups along channels, and per-channel groups
// along tokens. Shared by `uniform`, KIVI and the other quantizing policies.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "policies/policy.h"

namespace kvsim {

// Scale and minimum of one group, as stored: already rounded to fp16.
struct QuantGroup {
  float scale = 0.f;
  float min = 0.f;
};

// Quantizes x[i*stride], i < n, to `bits`:
//   mn = fp16(min x), scale = fp16((max x - min x) / (2^bits - 1)),
//   q = nearbyint(clamp((x - mn) / scale, 0, 2^bits - 1))  (ties to even),
//   x_hat = q * scale + mn.
// A constant group has scale 0: every code is 0 and x_hat = mn (never NaN).
// Writes x_hat to out[i*out_stride] (may alias x) and, if given, the codes.
QuantGroup quantize_group(const float* x, size_t n, size_t stride, int bits, float* out,
                          size_t out_stride, uint8_t* codes = nullptr);

// Appends the trace's K/V rows of `pos` (kv head `head` of `raw`) to `cache` as a
// 16-bit cache holds them, the precision every "fp16" row's memory is counted at
// (full, residuals, sinks, windows, MiKV's 16-bit tokens): a 16-bit trace's values
// are kept as stored (fp16, or bf16, whose values a 16-bit cache of the model holds);
// a float32 trace's are rounded to fp16 once. Throws FormatError when a float32 value
// is beyond fp16's range (it would be stored as infinity).
void append_16bit_row(HeadCache& cache, const LayerData& raw, int head, int32_t pos,
                      StoredDType dtype);

// The two 8-bit float formats of FP8 KV caches (OCP FP8): e4m3 (the `fn` variant: no
// infinities, largest finite 448, smallest subnormal 2^-9) and e5m2 (largest finite 57344,
// smallest subnormal 2^-16).
enum class Fp8Format { kE4M3, kE5M2 };
float fp8_max(Fp8Format format);
// x rounded to the nearest value of `format`, ties to even, saturating beyond its largest
// finite value (as serving engines convert with saturation); NaN stays NaN.
float round_to_fp8(float x, Fp8Format format);

enum class QuantAxis { kToken, kChannel };
QuantAxis parse_axis(const std::string& name);

// One side (keys or values) of one (layer, kv head), quantized per token:
// each token's head_dim channels split into groups of `group` channels.
class TokenwiseSide {
 public:
  TokenwiseSide(int head_dim, int bits, int group) : d_(head_dim), bits_(bits), group_(group) {}
  // Quantizes a row in place.
  void encode(float* row) const;
  void count(int64_t delta_tokens) { tokens_ += delta_tokens; }
  MemoryBits memory() const;

 private:
  int d_, bits_, group_;
  int64_t tokens_ = 0;
};

// A FIFO of fp16 rows (oldest first) whose oldest rows are quantized per token by `side`
// until at most `keep` remain (KIVI's value residual, QJL's value buffer). Their rows in
// `cache` are rewritten; returns whether any row was quantized.
bool quantize_oldest(std::deque<int32_t>& fifo, size_t keep, TokenwiseSide& side, HeadCache& cache);

// One side of one (layer, kv head), quantized per channel: tokens are grouped
// `group` at a time in arrival order and every channel of a group shares one
// (scale, min). Tokens wait in full precision until their group is complete.
class ChannelwiseSide {
 public:
  ChannelwiseSide(int head_dim, int bits, int group, bool keys)
      : d_(head_dim), bits_(bits), group_(group), keys_(keys) {}
  void add_pending(int32_t position) { pending_.push_back(position); }
  size_t pending() const { return pending_.size(); }
  // Quantizes the oldest `count` pending tokens as one group (their rows in
  // `cache` are rewritten with the dequantized values).
  void flush(HeadCache& cache, size_t count);
  // Rows already removed from the cache.
  void removed(std::span<const int32_t> positions);
  MemoryBits memory() const;

 private:
  struct Group {
    std::vector<int32_t> positions;  // ascending
    int64_t alive = 0;
  };
  int d_, bits_, group_;
  bool keys_;
  std::deque<int32_t> pending_;
  std::vector<Group> groups_;
  int64_t quantized_alive_ = 0;
  int64_t groups_alive_ = 0;
};

}  // namespace kvsim
