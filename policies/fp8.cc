// `fp8`: an FP8 KV cache as serving engines store it (vLLM's kv_cache_dtype=fp8_e4m3 /
// fp8_e5m2; methods.md "The caches researchers deploy"): every key and value element is stored
// as x^ = fp8(x / scale) * scale (round to nearest even, saturating), on arrival, with
//   scale=tensor: one float32 scale per layer for K and one for V, amax / fp8_max over the
//                 prompt's keys (values) of all KV heads (the scales an engine computes from
//                 the first forward pass, calculate_kv_scales);
//   scale=head:   the same per (layer, kv head);
//   scale=none:   1.0 (an engine without calibrated scales).
// The scale is computed from every prompt token, before any evict stage acts (the engine's
// forward pass sees them all). An all-zero tensor gets scale 1.
// Memory per (layer, kv head): 8 bits per element (data); the float32 scales (meta): 2 x 32 per
// kv head (head), or 2 x 32 per layer counted at kv head 0 (tensor), or none.
#include <algorithm>
#include <cmath>

#include "policies/quantizer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

class Fp8Store final : public StoreStage {
 public:
  Fp8Store(const Params& p, const ShardContext& ctx)
      : format_(p.get_string("format") == "e5m2" ? Fp8Format::kE5M2 : Fp8Format::kE4M3),
        scale_mode_(p.get_string("scale")),
        d_(ctx.meta->head_dim),
        hkv_(ctx.meta->num_kv_heads),
        prompt_len_(ctx.prompt_len),
        heads_(ctx) {}

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool prefill) override {
    Head& s = heads_(layer, head);
    if (prefill) {
      s.k_scale = scale(raw, head, true);
      s.v_scale = scale(raw, head, false);
    }
    for (int32_t pos : positions) {
      cache.append(pos, raw.key(head, pos), raw.value(head, pos));
      const size_t row = cache.size() - 1;
      for (int c = 0; c < d_; ++c) {
        float& k = cache.key_row(row)[c];
        float& v = cache.value_row(row)[c];
        k = round_to_fp8(k / s.k_scale, format_) * s.k_scale;
        v = round_to_fp8(v / s.v_scale, format_) * s.v_scale;
      }
      ++s.tokens;
      acted_ = true;
    }
  }

  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    heads_(layer, head).tokens -= static_cast<int64_t>(positions.size());
  }

  MemoryBits memory(int layer, int head) const override {
    const int64_t scales =
        scale_mode_ == "head" ? 64 : (scale_mode_ == "tensor" && head == 0 ? 64 : 0);
    return {heads_(layer, head).tokens * 2 * d_ * 8, scales};
  }
  bool acted() const override { return acted_; }

 private:
  struct Head {
    int64_t tokens = 0;
    float k_scale = 1.f, v_scale = 1.f;
  };

  // amax / fp8_max over the prompt, of one kv head or all of them.
  float scale(const LayerData& raw, int head, bool keys) const {
    if (scale_mode_ == "none") return 1.f;
    float amax = 0.f;
    const int first = scale_mode_ == "head" ? head : 0;
    const int last = scale_mode_ == "head" ? head + 1 : hkv_;
    for (int h = first; h < last; ++h) {
      for (int64_t t = 0; t < prompt_len_; ++t) {
        const float* x = keys ? raw.key(h, static_cast<int>(t)) : raw.value(h, static_cast<int>(t));
        for (int c = 0; c < d_; ++c) amax = std::max(amax, std::fabs(x[c]));
      }
    }
    return amax > 0.f ? amax / fp8_max(format_) : 1.f;
  }

  Fp8Format format_;
  std::string scale_mode_;
  int d_, hkv_;
  int64_t prompt_len_;
  PerHead<Head> heads_;
  bool acted_ = false;
};

PolicyInfo fp8_info() {
  return policy_info<Fp8Store>(
      "fp8", StageKind::kQuantize,
      "FP8 KV cache (e4m3 or e5m2) with a per-tensor or per-head float32 scale, as serving "
      "engines store it",
      {
          ParamSpec::Enum("format", "e4m3", {"e4m3", "e5m2"}, "the 8-bit float format"),
          ParamSpec::Enum("scale", "tensor", {"tensor", "head", "none"},
                          "amax/fp8_max of the prompt per layer (tensor) or per kv head, or 1"),
      });
}

}  // namespace
KVSIM_REGISTER_POLICY(fp8_info());
}  // namespace kvsim
