// `hf_quantized`: transformers' QuantizedCache exactly as deployed (cache_utils.py,
// QuantizedLayer with the HQQ and quanto backends; methods.md "The caches researchers deploy").
// Per layer, over all KV heads at once (the library quantizes the [1, Hkv, T, d] tensor):
//   prefill: the whole prompt is quantized; the fp16 residual is empty.
//   decode step t: attention sees dequant(Q) + the residual + the new token, in full
//   precision. When the residual plus the new token reach `residual` tokens, the library
//   re-quantizes everything it just returned (the dequantized values, the residual and the new
//   token) and empties the residual; here that happens at the next insert, i.e. after the
//   step's attention (what the library returns at the step is the un-re-quantized cache).
// Backends (keys and values alike, each with its own axis):
//   hqq:   hqq.core.quantize.Quantizer.quantize: the flattened tensor reshaped to [G, -1]
//          (axis 0: a group is a column of it, i.e. the elements j, j + N/G, j + 2N/G, ...:
//          strided across channels, tokens and heads, and dependent on T) or [-1, G] (axis 1:
//          G consecutive elements); min/max per group; scale = (2^b-1)/(max-min) (1 where
//          |max-min| <= 1e-4, at most 2e4), zero = -min*scale; then HQQ's proximal zero-point
//          optimisation (lp 0.7, beta 10, at most 20 iterations, stopping at the first that does
//          not lower the mean |error|, keeping that iteration's zero); codes
//          round(x*scale + zero) clamped to [0, 2^b-1]; x^ = (code - zero) / scale.
//   quanto: optimum.quanto MaxOptimizer + quantize_weight: axis 0 groups G consecutive
//          elements (a token's channels); axis -1 groups channel c over G consecutive rows of d
//          (tokens, across heads where T is not a multiple of G); scale = (max-min)/(2^b-1),
//          shift = -min; code = clamp(round((x + shift)/scale), 0, 2^b-1); x^ = scale*code - shift.
// All arithmetic in float32 as the libraries do on float32 tensors (the model's dtype in the
// verification test, tests/python/test_hf_quantized.py); ties round to even (torch.round).
// Memory per layer: b bits per quantized element (data, each head its own), 16 per residual
// element, and per group a scale and a zero/shift at 16 bits each (an fp16 model's
// compute dtype), counted at KV head 0 (groups span heads).
// The library keeps every token: an evict stage before it is refused when it drops a token.
#include <algorithm>
#include <cmath>

#include "policies/quantizer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

struct HfOptions {
  bool hqq;
  int bits, group, key_axis, value_axis;
  size_t residual;
  explicit HfOptions(const Params& p)
      : hqq(p.get_string("backend") == "hqq"),
        bits(static_cast<int>(p.get_int("bits"))),
        group(static_cast<int>(p.get_int("group"))),
        key_axis(static_cast<int>(p.get_int("k_axis"))),
        value_axis(static_cast<int>(p.get_int("v_axis"))),
        residual(static_cast<size_t>(p.get_int("residual"))) {}
};

// HQQ's shrinkage of the lp norm (lp < 1): sign(x) * max(|x| - |x|^(lp-1) / beta, 0).
float shrink_lp(float x, float beta, float lp) {
  const float a = std::fabs(x);
  const float out = std::max(a - (1.0f / beta) * std::pow(a, lp - 1.0f), 0.0f);
  return x > 0 ? out : (x < 0 ? -out : 0.0f);
}

// HQQ over a flat tensor w (float32, in place): groups of `g` elements strided by n/g (axis 0)
// or contiguous (axis 1).
void hqq_quantize(std::vector<float>& w, int g, int axis, int bits) {
  const size_t n = w.size(), groups = n / g;
  // Element i of group j.
  auto at = [&](size_t j, size_t i) -> float& {
    return axis == 0 ? w[i * groups + j] : w[j * g + i];
  };
  const float max_v = static_cast<float>((1 << bits) - 1);
  std::vector<float> scale(groups), zero(groups);
  for (size_t j = 0; j < groups; ++j) {
    float lo = at(j, 0), hi = at(j, 0);
    for (int i = 1; i < g; ++i) {
      lo = std::min(lo, at(j, i));
      hi = std::max(hi, at(j, i));
    }
    const float denom = hi - lo;
    float s = max_v / denom;
    if (std::fabs(denom) <= 1e-4f) s = 1.0f;
    s = std::min(s, 2e4f);
    scale[j] = s;
    zero[j] = -lo * s;
  }
  // Proximal optimisation of the zero points (optimize_weights_proximal_legacy).
  const float beta = 10.0f, lp = 0.7f;
  double best = INFINITY;
  std::vector<float> zsum(groups);
  for (int it = 0; it < 20; ++it) {
    double err = 0;
    for (size_t j = 0; j < groups; ++j) {
      double sum = 0;
      for (int i = 0; i < g; ++i) {
        const float x = at(j, i);
        const float q = std::clamp(std::nearbyint(x * scale[j] + zero[j]), 0.0f, max_v);
        const float r = (q - zero[j]) / scale[j];
        const float e = shrink_lp(x - r, beta, lp);
        sum += q - (x - e) * scale[j];
        err += std::fabs(x - r);
      }
      zsum[j] = static_cast<float>(sum / g);
    }
    zero = zsum;  // the step's zero is kept even when it does not improve (the code's order)
    const auto current = static_cast<float>(err / static_cast<double>(n));
    if (current < best) {
      best = current;
    } else {
      break;
    }
  }
  for (size_t j = 0; j < groups; ++j) {
    const float inv = 1.0f / scale[j];
    for (int i = 0; i < g; ++i) {
      float& x = at(j, i);
      const float q = std::clamp(std::nearbyint(x * scale[j] + zero[j]), 0.0f, max_v);
      x = (q - zero[j]) * inv;
    }
  }
}

// quanto (MaxOptimizer + quantize_affine + dequantize) over a flat [rows, d] tensor in place.
void quanto_quantize(std::vector<float>& w, int d, int g, int axis, int bits) {
  const size_t n = w.size();
  const float levels = static_cast<float>((1 << bits) - 1);
  // axis 0: group j = elements [j*g, (j+1)*g). axis -1: group (c, k) = channel c of rows
  // k*g .. k*g+g-1.
  const size_t groups = n / g;
  for (size_t j = 0; j < groups; ++j) {
    const size_t c = j % d, k = j / d;
    auto at = [&](int i) -> float& { return axis == 0 ? w[j * g + i] : w[(k * g + i) * d + c]; };
    float lo = at(0), hi = at(0);
    for (int i = 1; i < g; ++i) {
      lo = std::min(lo, at(i));
      hi = std::max(hi, at(i));
    }
    const float scale = (hi - lo) / levels, shift = -lo;
    for (int i = 0; i < g; ++i) {
      float& x = at(i);
      // A constant group (scale 0) divides 0 by 0 in the library (undefined codes); here it
      // keeps its value.
      const float q =
          scale > 0 ? std::clamp(std::nearbyint((x + shift) / scale), 0.0f, levels) : 0.0f;
      x = scale * q - shift;
    }
  }
}

class HfQuantizedStore final : public StoreStage {
 public:
  HfQuantizedStore(const Params& p, const ShardContext& ctx)
      : opt_(p),
        dtype_(ctx.meta->dtype),
        d_(ctx.meta->head_dim),
        hkv_(ctx.meta->num_kv_heads),
        layers_(ctx.slots.size()) {}

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool prefill) override {
    Layer& L = layers_[layer];
    const bool whole = prefill ? !positions.empty() && positions.front() == 0 &&
                                     positions.back() + 1 == static_cast<int32_t>(positions.size())
                               : positions.size() == 1 && positions.front() == L.tokens;
    if (!whole) {
      throw ConfigError(
          "hf_quantized reproduces transformers' QuantizedCache, which keeps every token: it "
          "cannot follow an evict stage that drops tokens");
    }
    L.caches.resize(hkv_, nullptr);
    L.caches[head] = &cache;
    if (!prefill && head == 0 && L.flush_pending) {
      requantize(L);  // after the previous step's attention
      L.flush_pending = false;
    }
    for (int32_t pos : positions) append_16bit_row(cache, raw, head, pos, dtype_);
    if (head + 1 < hkv_) return;  // the layer's last head: the library's update, for all heads
    if (prefill) {
      L.tokens = static_cast<int32_t>(positions.size());
      requantize(L);
      return;
    }
    ++L.tokens;
    if (L.residual + 1 >= opt_.residual) {
      L.flush_pending = true;  // the residual and the new token are re-quantized after attention
    }
    ++L.residual;  // until then they are full precision
  }

  void removed(int, int, HeadCache&, std::span<const int32_t> positions) override {
    if (!positions.empty()) {
      throw ConfigError(
          "hf_quantized reproduces transformers' QuantizedCache, which keeps every token: it "
          "cannot follow an evict stage");
    }
  }

  MemoryBits memory(int layer, int head) const override {
    const Layer& L = layers_[layer];
    const int64_t quantized = L.quantized, fp16 = L.tokens - L.quantized;
    MemoryBits m{2 * d_ * (quantized * opt_.bits + fp16 * 16), 0};
    if (head == 0) m.meta = L.groups * 32;
    return m;
  }
  bool acted() const override { return acted_; }

 private:
  struct Layer {
    std::vector<HeadCache*> caches;  // [kv head], set by insert
    int32_t tokens = 0;              // tokens in the cache
    int64_t quantized = 0;           // tokens in the quantized store
    size_t residual = 0;             // full-precision tokens after it
    int64_t groups = 0;              // quantization groups, K and V
    bool flush_pending = false;
  };

  // Quantizes all tokens of every head of the layer, K and V, from the values the cache holds.
  void requantize(Layer& L) {
    const size_t T = L.caches[0]->size();
    for (bool keys : {true, false}) {
      std::vector<float> w(static_cast<size_t>(hkv_) * T * d_);  // [1, Hkv, T, d]
      for (int h = 0; h < hkv_; ++h) {
        const HeadCache& c = *L.caches[h];
        std::copy_n(keys ? c.keys.data() : c.values.data(), T * d_, w.begin() + h * T * d_);
      }
      const int axis = keys ? opt_.key_axis : opt_.value_axis;
      if (w.size() % opt_.group != 0 || (!opt_.hqq && axis == -1 && (hkv_ * T) % opt_.group)) {
        throw ConfigError("hf_quantized: group=" + std::to_string(opt_.group) +
                          " does not divide the layer's " + std::to_string(w.size()) +
                          " elements (" + std::to_string(T) +
                          " tokens); the library refuses this too");
      }
      if (opt_.hqq) {
        hqq_quantize(w, opt_.group, axis, opt_.bits);
      } else {
        quanto_quantize(w, d_, opt_.group, axis, opt_.bits);
      }
      for (int h = 0; h < hkv_; ++h) {
        HeadCache& c = *L.caches[h];
        std::copy_n(w.begin() + h * T * d_, T * d_, keys ? c.keys.data() : c.values.data());
      }
    }
    L.quantized = static_cast<int64_t>(T);
    L.residual = 0;
    L.groups = 2 * static_cast<int64_t>(hkv_) * static_cast<int64_t>(T) * d_ / opt_.group;
    acted_ = true;
  }

  HfOptions opt_;
  StoredDType dtype_;
  int d_, hkv_;
  std::vector<Layer> layers_;  // [local layer]
  bool acted_ = false;
};

PolicyInfo hf_quantized_info() {
  PolicyInfo info = policy_info<HfQuantizedStore>(
      "hf_quantized", StageKind::kQuantize,
      "transformers' QuantizedCache (HQQ or quanto backend): the whole cache re-quantized from "
      "its dequantized values at every residual flush",
      {
          ParamSpec::Enum("backend", "hqq", {"hqq", "quanto"}, "the library's backend"),
          ParamSpec::Int("bits", 4, 1, 8, "nbits (hqq: 1, 2, 4, 8; quanto: 2, 4)"),
          ParamSpec::Int("group", 64, 1, 1 << 20, "q_group_size"),
          ParamSpec::Int("k_axis", 0, -1, 1, "axis_key (hqq: 0, 1; quanto: 0, -1)"),
          ParamSpec::Int("v_axis", 0, -1, 1, "axis_value (hqq: 0, 1; quanto: 0, -1)"),
          ParamSpec::Int("residual", 128, 1, 1 << 30, "residual_length"),
      });
  info.check = [](const Params& p) {
    const bool hqq = p.get_string("backend") == "hqq";
    const int64_t b = p.get_int("bits");
    if (hqq ? (b != 1 && b != 2 && b != 4 && b != 8) : (b != 2 && b != 4)) {
      throw ConfigError(
          std::string("hf_quantized: bits=") + std::to_string(b) + " is not one of " +
          (hqq ? "1, 2, 4, 8 (hqq; 3 is packed 10 per int32 and not modelled)" : "2, 4 (quanto)"));
    }
    for (const char* axis : {"k_axis", "v_axis"}) {
      const int64_t a = p.get_int(axis);
      if (hqq ? (a != 0 && a != 1) : (a != 0 && a != -1)) {
        throw ConfigError(std::string("hf_quantized: ") + axis + "=" + std::to_string(a) +
                          (hqq ? " must be 0 or 1 (hqq)" : " must be 0 or -1 (quanto)"));
      }
    }
  };
  info.check_trace = [](const Params& p, const TraceMeta& meta) {
    if (p.get_string("backend") == "quanto" && meta.head_dim % p.get_int("group") != 0 &&
        (p.get_int("k_axis") == 0 || p.get_int("v_axis") == 0)) {
      throw ConfigError("hf_quantized: quanto with axis 0 groups a token's channels: group=" +
                        std::to_string(p.get_int("group")) +
                        " must divide head_dim=" + std::to_string(meta.head_dim));
    }
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(hf_quantized_info());
}  // namespace kvsim
