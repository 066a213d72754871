// `kivi` (Liu et al., 2024, arXiv 2402.02750): tuning-free asymmetric
// quantization, keys per channel and values per token, with a full-precision
// residual of recent tokens (methods.md; official code jy-yuan/KIVI,
// models/llama_kivi.py).
//
//   Keys: `group` (G) consecutive tokens share one fp16 (scale, min) per
//         channel. After prefill the first T - (T mod R) tokens are quantized
//         (in groups of G) and the rest stay fp16 in the residual. Each decode
//         token joins the residual; a residual that has reached R tokens is
//         quantized as R/G groups and emptied at the next insert, i.e. after
//         the step's attention, as the official code flushes after attending.
//         So attention sees 1..R fp16 keys.
//   Values: each token's head_dim channels in groups of G, one fp16 (scale,
//         min) per group. After prefill all but the last R tokens are
//         quantized; each decode token joins a FIFO residual and, once more
//         than R are fp16, the oldest is quantized. `v_flush=eager` (default,
//         methods.md: a FIFO of exactly R when attention runs) quantizes it
//         before the step's attention; `v_flush=lazy` after it, as the
//         official code does (attention then sees R+1 fp16 values).
//   T is the number of tokens the store receives at prefill (after a sliding
//   window and any evict stage).
//
// Composition after evict stages (h2o+kivi, snapkv+kivi, streamingllm+kivi):
// an evicted token frees its codes, or its fp16 residual slot; a key group's
// (scale, min) are freed with the group's last live token. The residual
// counts live tokens: evicting residual tokens delays the flush.
//
// Memory per (layer, KV head): b bits per quantized element plus, per group,
// 32 bits (fp16 scale + min): b + 32/G per element for keys (G tokens x 1
// channel) and values (1 token x G channels); 16 bits per residual element.
// Codes are counted at b bits each: the official int32 packing of 32/b codes
// per word pads nothing when 32/b divides the packed row (b = 1, 2, 4, 8, the
// code's widths), and for other widths its padding is ignored.
#include <algorithm>
#include <deque>

#include "policies/quantizer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

class KiviStore final : public StoreStage {
 public:
  KiviStore(const Params& p, const ShardContext& ctx)
      : dtype_(ctx.meta->dtype),
        d_(ctx.meta->head_dim),
        hkv_(ctx.meta->num_kv_heads),
        bits_(static_cast<int>(p.get_int("bits"))),
        group_(static_cast<int>(p.get_int("group"))),
        residual_(static_cast<size_t>(p.get_int("residual"))),
        lazy_values_(p.get_string("v_flush") == "lazy") {
    for (size_t i = 0; i < ctx.slots.size() * hkv_; ++i) {
      heads_.push_back(
          {ChannelwiseSide(d_, bits_, group_, true), TokenwiseSide(d_, bits_, group_), {}});
    }
  }

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool prefill) override {
    Head& s = at(layer, head);
    if (prefill) {
      // Quantize the first T - (T mod R) keys and all but the last R values.
      append(s, head, cache, positions, raw);
      flush_keys(s, cache);
      flush_values(s, cache);
      return;
    }
    if (s.keys.pending() >= residual_) flush_keys(s, cache);  // lazy: after last step's attention
    if (lazy_values_) flush_values(s, cache);
    append(s, head, cache, positions, raw);
    if (!lazy_values_) flush_values(s, cache);
  }

  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    Head& s = at(layer, head);
    s.keys.removed(positions);
    for (int32_t pos : positions) {
      auto it = std::find(s.value_residual.begin(), s.value_residual.end(), pos);
      if (it != s.value_residual.end()) {
        s.value_residual.erase(it);
      } else {
        s.values.count(-1);
      }
    }
  }

  MemoryBits memory(int layer, int head) const override {
    const Head& s = heads_[layer * hkv_ + head];
    const MemoryBits k = s.keys.memory();
    const MemoryBits v = s.values.memory();
    const auto residual = static_cast<int64_t>(s.value_residual.size());
    return {k.data + v.data + residual * d_ * 16, k.meta + v.meta};
  }
  bool acted() const override { return acted_; }
  // Rows leave the fp16 residuals oldest first and are never changed after: every row older
  // than both residuals is final.
  size_t final_rows(int layer, int head, const HeadCache& cache) const override {
    const Head& s = heads_[layer * hkv_ + head];
    return cache.size() -
           std::min(cache.size(), std::max(s.keys.pending(), s.value_residual.size()));
  }

 private:
  struct Head {
    ChannelwiseSide keys;                // quantized groups + the fp16 key residual (pending)
    TokenwiseSide values;                // quantized values (count)
    std::deque<int32_t> value_residual;  // fp16 values, oldest first
  };
  Head& at(int layer, int head) { return heads_[layer * hkv_ + head]; }

  void append(Head& s, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw) {
    for (int32_t pos : positions) {
      append_16bit_row(cache, raw, head, pos, dtype_);  // the fp16 residual
      s.keys.add_pending(pos);
      s.value_residual.push_back(pos);
    }
  }

  // Quantizes the whole blocks of R residual keys, G tokens per group.
  void flush_keys(Head& s, HeadCache& cache) {
    const size_t blocks = s.keys.pending() / residual_;
    if (blocks == 0) return;
    for (size_t g = 0; g < blocks * residual_ / group_; ++g) s.keys.flush(cache, group_);
    acted_ = true;
  }

  // Quantizes the oldest residual values until at most R remain.
  void flush_values(Head& s, HeadCache& cache) {
    if (quantize_oldest(s.value_residual, residual_, s.values, cache)) acted_ = true;
  }

  StoredDType dtype_;
  int d_, hkv_, bits_, group_;
  size_t residual_;
  bool lazy_values_;
  bool acted_ = false;       // some key group or value row was quantized
  std::vector<Head> heads_;  // [local layer * kv heads]
};

PolicyInfo kivi_info() {
  PolicyInfo info = policy_info<KiviStore>(
      "kivi", StageKind::kQuantize,
      "keys per channel, values per token, asymmetric 2-bit with an fp16 residual of recent "
      "tokens (KIVI)",
      {
          ParamSpec::Int("bits", 2, 1, 8, "bits per quantized element (the paper uses 2 and 4)"),
          ParamSpec::Int(
              "group", 32, 1, 1 << 20,
              "G: tokens per key group (per channel), channels per value group (per token)"),
          ParamSpec::Int("residual", 128, 1, 1 << 30,
                         "R: recent tokens kept in fp16 (a multiple of group)"),
          ParamSpec::Enum("v_flush", "eager", {"eager", "lazy"},
                          "eager: the value residual holds exactly R when attention runs "
                          "(methods.md); lazy: the oldest is quantized after attention (official "
                          "code, R+1 at attention)"),
      });
  info.check = [](const Params& p) {
    const int64_t g = p.get_int("group"), r = p.get_int("residual");
    if (r % g != 0) {
      throw ConfigError("kivi: residual=" + std::to_string(r) + " must be a multiple of group=" +
                        std::to_string(g) + " (the residual is flushed as residual/group groups)");
    }
  };
  info.check_trace = [](const Params& p, const TraceMeta& meta) {
    const int64_t g = p.get_int("group");
    if (g > meta.head_dim || meta.head_dim % g != 0) {
      throw ConfigError("kivi: group=" + std::to_string(g) + " must divide head_dim=" +
                        std::to_string(meta.head_dim) + " (values are grouped along channels)");
    }
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(kivi_info());
}  // namespace kvsim
