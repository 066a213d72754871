#include "policies/quantizer.h"

#include <algorithm>
#include <cmath>

#include "sim/base/errors.h"
#include "sim/base/fp16.h"

namespace kvsim {

void append_16bit_row(HeadCache& cache, const LayerData& raw, int head, int32_t pos,
                      StoredDType dtype) {
  cache.append(pos, raw.key(head, pos), raw.value(head, pos));
  if (dtype != StoredDType::kFloat32) return;
  const size_t row = cache.size() - 1;
  for (float* x : {cache.key_row(row), cache.value_row(row)}) {
    for (int c = 0; c < cache.head_dim; ++c) {
      const float h = round_to_half(x[c]);
      if (std::isinf(h)) {
        throw FormatError("float32 trace value " + std::to_string(x[c]) + " (kv head " +
                          std::to_string(head) + ", token " + std::to_string(pos) +
                          ") is beyond fp16's range (65504): a 16-bit cache cannot hold it");
      }
      x[c] = h;
    }
  }
}

QuantGroup quantize_group(const float* x, size_t n, size_t stride, int bits, float* out,
                          size_t out_stride, uint8_t* codes) {
  KVSIM_CHECK(n > 0 && bits >= 1 && bits <= 16);
  float lo = x[0], hi = x[0];
  for (size_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i * stride]);
    hi = std::max(hi, x[i * stride]);
  }
  const float max_code = static_cast<float>((1u << bits) - 1u);
  QuantGroup g;
  g.min = round_to_half(lo);
  g.scale = round_to_half((hi - lo) / max_code);
  for (size_t i = 0; i < n; ++i) {
    float code = 0.f;
    if (g.scale > 0.f) {
      code = std::nearbyint(std::clamp((x[i * stride] - g.min) / g.scale, 0.f, max_code));
    }
    if (codes) codes[i] = static_cast<uint8_t>(code);
    out[i * out_stride] = code * g.scale + g.min;
  }
  return g;
}

float fp8_max(Fp8Format format) { return format == Fp8Format::kE4M3 ? 448.f : 57344.f; }

float round_to_fp8(float x, Fp8Format format) {
  if (std::isnan(x)) return x;
  const int mantissa_bits = format == Fp8Format::kE4M3 ? 3 : 2;
  const int min_exponent = format == Fp8Format::kE4M3 ? -6 : -14;  // of the normal numbers
  const float a = std::fabs(x);
  if (a == 0.f) return x;
  int e = 0;
  (void)std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1): the leading bit is 2^(e-1)
  const int exponent = std::max(e - 1, min_exponent);
  // The spacing of the format at a's binade; a / step is exact (a power of two), and rounding
  // it to an integer ties to even on the last mantissa bit.
  const float step = std::ldexp(1.f, exponent - mantissa_bits);
  const float rounded = std::min(std::nearbyint(a / step) * step, fp8_max(format));
  return std::copysign(rounded, x);
}

QuantAxis parse_axis(const std::string& name) {
  if (name == "token") return QuantAxis::kToken;
  if (name == "channel") return QuantAxis::kChannel;
  throw ConfigError("unknown quantization axis '" + name + "' (valid: token, channel)");
}

void TokenwiseSide::encode(float* row) const {
  for (int start = 0; start < d_; start += group_) {
    const int n = std::min(group_, d_ - start);
    quantize_group(row + start, n, 1, bits_, row + start, 1);
  }
}

MemoryBits TokenwiseSide::memory() const {
  const int64_t groups_per_token = (d_ + group_ - 1) / group_;
  return {tokens_ * d_ * bits_, tokens_ * groups_per_token * 32};
}

bool quantize_oldest(std::deque<int32_t>& fifo, size_t keep, TokenwiseSide& side,
                     HeadCache& cache) {
  bool any = false;
  while (fifo.size() > keep) {
    const int64_t row = cache.find(fifo.front());
    KVSIM_CHECK(row >= 0);
    side.encode(cache.value_row(row));
    side.count(1);
    fifo.pop_front();
    any = true;
  }
  return any;
}

void ChannelwiseSide::flush(HeadCache& cache, size_t count) {
  KVSIM_CHECK(count > 0 && count <= pending_.size());
  Group group;
  group.positions.assign(pending_.begin(), pending_.begin() + static_cast<long>(count));
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(count));
  // Gather the group's rows into a [count, d] block, quantize each channel, scatter back.
  std::vector<int64_t> rows(count);
  std::vector<float> block(count * d_);
  for (size_t i = 0; i < count; ++i) {
    rows[i] = cache.find(group.positions[i]);
    KVSIM_CHECK(rows[i] >= 0);
    const float* src = keys_ ? cache.key_row(rows[i]) : cache.value_row(rows[i]);
    std::copy_n(src, d_, block.begin() + i * d_);
  }
  for (int c = 0; c < d_; ++c) {
    quantize_group(block.data() + c, count, d_, bits_, block.data() + c, d_);
  }
  for (size_t i = 0; i < count; ++i) {
    float* dst = keys_ ? cache.key_row(rows[i]) : cache.value_row(rows[i]);
    std::copy_n(block.begin() + i * d_, d_, dst);
  }
  group.alive = static_cast<int64_t>(count);
  quantized_alive_ += group.alive;
  ++groups_alive_;
  groups_.push_back(std::move(group));
}

void ChannelwiseSide::removed(std::span<const int32_t> positions) {
  for (int32_t pos : positions) {
    auto p = std::find(pending_.begin(), pending_.end(), pos);
    if (p != pending_.end()) {
      pending_.erase(p);
      continue;
    }
    for (auto& g : groups_) {
      if (g.alive == 0 || g.positions.empty() || pos < g.positions.front() ||
          pos > g.positions.back()) {
        continue;
      }
      if (std::binary_search(g.positions.begin(), g.positions.end(), pos)) {
        --g.alive;
        --quantized_alive_;
        if (g.alive == 0) --groups_alive_;  // its scales and minima are freed with it
        break;
      }
    }
  }
}

MemoryBits ChannelwiseSide::memory() const {
  return {static_cast<int64_t>(pending_.size()) * d_ * 16 + quantized_alive_ * d_ * bits_,
          groups_alive_ * d_ * 32};
}

}  // namespace kvsim
