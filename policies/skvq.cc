// `skvq` (Duanmu et al., 2024, arXiv 2405.06219): sliding-window KV cache
// quantization with channel reordering and clipped dynamic quantization.
//
// Layout per (layer, KV head): [sink | quantized | window].
//   - The first `sinks` tokens the store receives stay fp16 (attention sinks).
//     A prompt shorter than `sinks` fills the sink with decode tokens first.
//   - The last `window` tokens stay fp16. After each insert, while the window
//     holds more than `window` tokens, the oldest is quantized and leaves it:
//     at prefill everything between the sinks and the window is quantized; at
//     each decode step the oldest window token is (official code: the window
//     is full, so the new token pushes one out before attention).
//   - Quantization, K and V alike, per token and per channel group: clipped
//     dynamic min/max (policies/clipped_quantizer.h) with one (scale, zero
//     point) per group in fp16 or fp8 (`meta`), clip ratio `clip` (0.92, the
//     official value) or one per group searched on calibration data
//     (`clip_search`). Bit widths 1..8 or 1.5 (ternary).
//   - Groups: the channels of a scope unit (`scope=head`: one KV head's
//     head_dim channels; `scope=layer`: all KV heads' channels of the layer,
//     the official hidden-dimension grouping) are cut into groups, either
//     contiguous groups of `group` channels (`reorder=false`) or the
//     unit_dim/group k-means clusters of the channels' calibrated (min, max)
//     (`reorder=true`), K and V each with their own grouping per layer
//     (policies/skvq_calibration.h).
//
// Calibration is held out from the scored tokens: `calib=PATH` loads a file
// from `kvsim calibrate` (refused when it was computed on the very sequence
// being scored); without it, sequence s is calibrated on every other sequence
// of the trace (leave-one-out; statistics are collected once by `prepare`).
// A single-sequence trace without a file is refused. reorder=false with
// clip_search=false needs no calibration.
//
// Composition after evict stages: an evicted sink, quantized or window token
// frees its bits; an evicted sink is not replaced and a window that lost a
// token refills with new tokens before it quantizes again. scope=layer needs
// every KV head of a layer to hold the same tokens (a token's groups span
// heads); per-head eviction (snapkv, h2o, ...) before it is refused with a
// ConfigError at the first step where heads differ. scope=head always composes.
//
// prerope=true (the official code caches keys before RoPE; methods.md "Pre-RoPE
// mode"): a key is un-rotated at its position (policies/rope.h) before the
// grouping, clipping and quantization, and the dequantized key is rotated back
// at the same position; the calibration statistics are taken on the same
// pre-RoPE keys (a calibration file records which). Values are unchanged.
// Refused for RoPE types the rotation cannot invert (llama3, yarn, ...).
//
// Memory per (layer, KV head), K and V each: 16 bits per sink or window
// element; per quantized token, `ceil(b)` bits per element (real packing; the
// ideal payload counts log2(3) for ternary) plus 2*s bits (s = 16 fp16, 8 fp8)
// per group; with reorder=true the index the official code keeps as int16:
// 16 bits per channel of the permutation plus 16 bits per group boundary.
// scope=layer attributes a group's metadata and boundaries to the KV head of
// the group's lowest channel and each permutation entry to its channel's head,
// so that the heads of a layer sum to the layer's exact bits.
#include <algorithm>
#include <deque>
#include <memory>

#include "policies/clipped_quantizer.h"
#include "policies/policy.h"
#include "policies/quantizer.h"
#include "policies/rope.h"
#include "policies/skvq_calibration.h"
#include "sim/base/errors.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

// Calibration prepared once per run.
struct SkvqPrepared final : PolicyState {
  std::shared_ptr<const SkvqCalibration> file;            // calib=PATH
  std::vector<std::vector<SkvqLayerStats>> per_sequence;  // [sequence][slot], leave-one-out
};

class SkvqStore final : public StoreStage {
 public:
  SkvqStore(const Params& p, const ShardContext& ctx)
      : opt_(SkvqOptions::from_params(p)),
        d_(ctx.meta->head_dim),
        hkv_(ctx.meta->num_kv_heads),
        sinks_(p.get_int("sinks")),
        window_(p.get_int("window")),
        meta_bits_(meta_format_bits(opt_.meta)),
        reorder_(opt_.reorders(*ctx.meta)),
        ctx_dtype_(ctx.meta->dtype) {
    const TraceMeta& meta = *ctx.meta;
    const int du = opt_.unit_dim(meta);
    const auto* prepared = dynamic_cast<const SkvqPrepared*>(ctx.prepared.get());
    if (opt_.needs_calibration(meta) && !prepared) {
      throw ConfigError(
          "skvq: reorder/clip_search need a calibration, prepared by "
          "PolicyInfo::prepare before the replay (none was given)");
    }
    for (size_t local = 0; local < ctx.slots.size(); ++local) {
      const int slot = ctx.slots[local];
      SkvqLayerCalibration calib;
      if (!opt_.needs_calibration(meta)) {
        SkvqGrouping g;
        g.perm.resize(du);
        for (int c = 0; c < du; ++c) g.perm[c] = c;
        for (int s = 0; s <= du; s += opt_.group) g.starts.push_back(s);
        calib.k.assign(opt_.units(meta), g);
        calib.v.assign(opt_.units(meta), g);
      } else if (prepared->file) {
        const SkvqCalibration& file = *prepared->file;
        if (file.trace_id == meta.trace_id &&
            std::find(file.sequences.begin(), file.sequences.end(), ctx.sequence) !=
                file.sequences.end()) {
          throw ConfigError("skvq: the calibration file was computed on sequence " +
                            std::to_string(ctx.sequence) +
                            " of this trace, which is being scored; calibrate on held-out "
                            "sequences (kvsim calibrate) or replay other sequences");
        }
        calib = file.layers[slot];
      } else {
        std::vector<const SkvqLayerStats*> others;
        for (size_t s = 0; s < prepared->per_sequence.size(); ++s) {
          if (static_cast<int>(s) != ctx.sequence)
            others.push_back(&prepared->per_sequence[s][slot]);
        }
        calib = calibrate_skvq_layer(others, meta, opt_);
      }
      layers_.push_back(make_layer(calib, meta));
      if (opt_.prerope) ropes_.push_back(Rope::for_slot(meta, slot));
    }
    heads_.resize(ctx.slots.size() * hkv_);
  }

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool /*prefill*/) override {
    Head& s = at(layer, head);
    for (int32_t pos : positions) {
      append_16bit_row(cache, raw, head, pos, ctx_dtype_);  // sinks and window: fp16
      s.track(pos, +1);
      if (s.sinks_assigned < sinks_) {
        s.sinks.push_back(pos);
        ++s.sinks_assigned;
      } else {
        s.window.push_back(pos);
      }
    }
    while (static_cast<int64_t>(s.window.size()) > window_) {
      const int32_t pos = s.window.front();
      s.window.pop_front();
      const int64_t row = cache.find(pos);
      KVSIM_CHECK(row >= 0);
      quantize(layer, head, raw, pos, true, cache.key_row(row));
      quantize(layer, head, raw, pos, false, cache.value_row(row));
      ++s.quantized;
      acted_ = true;
    }
    check_heads_agree(layer, head);
  }

  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    Head& s = at(layer, head);
    for (int32_t pos : positions) {
      s.track(pos, -1);
      if (auto it = std::find(s.sinks.begin(), s.sinks.end(), pos); it != s.sinks.end()) {
        s.sinks.erase(it);
      } else if (auto w = std::find(s.window.begin(), s.window.end(), pos); w != s.window.end()) {
        s.window.erase(w);
      } else {
        KVSIM_CHECK_MSG(s.quantized > 0, "skvq: removing a token it does not hold");
        --s.quantized;
      }
    }
  }

  MemoryBits memory(int layer, int head) const override {
    check_heads_agree(layer, head);
    const Head& s = heads_[layer * hkv_ + head];
    const Layer& l = layers_[layer];
    const int64_t fp16_tokens = static_cast<int64_t>(s.sinks.size() + s.window.size());
    MemoryBits m;
    m.data = fp16_tokens * 2 * d_ * 16 +
             s.quantized * d_ * (opt_.k_bits.packed_bits + opt_.v_bits.packed_bits);
    m.meta = s.quantized * (l.k.owned_groups[head] + l.v.owned_groups[head]) * 2 * meta_bits_ +
             l.k.index_bits[head] + l.v.index_bits[head];
    if (opt_.k_bits.ternary() || opt_.v_bits.ternary()) {
      m.ideal_data =
          static_cast<double>(fp16_tokens * 2 * d_ * 16) +
          static_cast<double>(s.quantized * d_) * (opt_.k_bits.ideal_bits + opt_.v_bits.ideal_bits);
    }
    return m;
  }
  bool acted() const override { return acted_; }

 private:
  // One side (K or V) of one layer: the groups of each scope unit, in original
  // channel indices of the unit, with their clip ratios.
  struct Side {
    std::vector<std::vector<std::vector<int32_t>>> groups;  // [unit][group] channels
    std::vector<std::vector<float>> clip;                   // [unit][group]
    std::vector<int64_t> owned_groups;                      // [kv head] groups counted on it
    std::vector<int64_t> index_bits;                        // [kv head] reorder index bits
  };
  struct Layer {
    Side k, v;
  };
  struct Head {
    std::vector<int32_t> sinks;  // live sink positions
    int64_t sinks_assigned = 0;  // tokens ever made sinks (an evicted sink is not replaced)
    std::deque<int32_t> window;  // fp16 recent tokens, oldest first
    int64_t quantized = 0;
    // Order-free fingerprint of the live positions (scope=layer agreement check).
    uint64_t fingerprint = 0;
    int64_t live = 0;
    void track(int32_t pos, int sign) {
      uint64_t st = static_cast<uint64_t>(pos) + 0x51ed27ull;
      const uint64_t h = splitmix64(st);
      fingerprint += sign > 0 ? h : -h;
      live += sign;
    }
  };

  Head& at(int layer, int head) { return heads_[layer * hkv_ + head]; }

  Side make_side(const std::vector<SkvqGrouping>& units, const TraceMeta& meta) const {
    Side side;
    side.owned_groups.assign(hkv_, 0);
    side.index_bits.assign(hkv_, 0);
    const int du = opt_.unit_dim(meta);
    KVSIM_CHECK(static_cast<int>(units.size()) == opt_.units(meta));
    for (size_t u = 0; u < units.size(); ++u) {
      const SkvqGrouping& g = units[u];
      KVSIM_CHECK(static_cast<int>(g.perm.size()) == du);
      std::vector<std::vector<int32_t>> groups;
      std::vector<float> clips;
      for (int gi = 0; gi < g.groups(); ++gi) {
        std::vector<int32_t> channels(g.perm.begin() + g.starts[gi],
                                      g.perm.begin() + g.starts[gi + 1]);
        const int32_t lowest = *std::min_element(channels.begin(), channels.end());
        const int owner = opt_.scope == SkvqScope::kHead ? static_cast<int>(u) : lowest / d_;
        ++side.owned_groups[owner];
        if (reorder_) side.index_bits[owner] += 16;  // the group's start boundary
        groups.push_back(std::move(channels));
        clips.push_back(g.clip.empty() ? static_cast<float>(opt_.clip) : g.clip[gi]);
      }
      if (reorder_) {
        // The permutation (16 bits a channel) and the closing boundary.
        const int owner0 = opt_.scope == SkvqScope::kHead ? static_cast<int>(u) : 0;
        side.index_bits[owner0] += 16;
        for (int c = 0; c < du; ++c) {
          side.index_bits[opt_.scope == SkvqScope::kHead ? static_cast<int>(u) : c / d_] += 16;
        }
      }
      side.groups.push_back(std::move(groups));
      side.clip.push_back(std::move(clips));
    }
    return side;
  }

  Layer make_layer(const SkvqLayerCalibration& calib, const TraceMeta& meta) const {
    return {make_side(calib.k, meta), make_side(calib.v, meta)};
  }

  // Quantizes token `pos` of one side and writes this head's dequantized
  // channels to `out` [head_dim]. With prerope, the unit's keys are un-rotated
  // at `pos` first and this head's dequantized key is rotated back.
  void quantize(int layer, int head, const LayerData& raw, int32_t pos, bool keys, float* out) {
    const Side& side = keys ? layers_[layer].k : layers_[layer].v;
    const BitWidth& bits = keys ? opt_.k_bits : opt_.v_bits;
    const bool per_head = opt_.scope == SkvqScope::kHead;
    const int unit = per_head ? head : 0;
    const int first_head = per_head ? head : 0, unit_heads = per_head ? 1 : hkv_;
    const bool rotate = keys && opt_.prerope;
    // The unit's channels (a channel index ch of the unit is head ch / d_, channel ch % d_).
    unit_in_.resize(static_cast<size_t>(unit_heads) * d_);
    unit_out_.resize(unit_in_.size());
    for (int h = 0; h < unit_heads; ++h) {
      const float* row = keys ? raw.key(first_head + h, pos) : raw.value(first_head + h, pos);
      float* dst = unit_in_.data() + static_cast<size_t>(h) * d_;
      std::copy_n(row, d_, dst);
      if (rotate) ropes_[layer].apply(dst, pos, /*inverse=*/true);
    }
    for (size_t gi = 0; gi < side.groups[unit].size(); ++gi) {
      const std::vector<int32_t>& channels = side.groups[unit][gi];
      buf_.resize(channels.size());
      hat_.resize(channels.size());
      for (size_t j = 0; j < channels.size(); ++j) buf_[j] = unit_in_[channels[j]];
      clipped_quantize(buf_.data(), buf_.size(), bits.max_int, side.clip[unit][gi], opt_.meta,
                       hat_.data());
      for (size_t j = 0; j < channels.size(); ++j) unit_out_[channels[j]] = hat_[j];
    }
    std::copy_n(unit_out_.data() + static_cast<size_t>(head - first_head) * d_, d_, out);
    if (rotate) ropes_[layer].apply(out, pos, /*inverse=*/false);
  }

  // scope=layer: every KV head of the layer must hold the same tokens.
  void check_heads_agree(int layer, int head) const {
    if (opt_.scope != SkvqScope::kLayer || head == 0) return;
    const Head& a = heads_[layer * hkv_];
    const Head& b = heads_[layer * hkv_ + head];
    if (a.live != b.live || a.fingerprint != b.fingerprint) {
      throw ConfigError(
          "skvq: scope=layer quantizes all KV heads of a token together, but the evict stages "
          "before it kept different tokens in KV head 0 (" +
          std::to_string(a.live) + ") and KV head " + std::to_string(head) + " (" +
          std::to_string(b.live) +
          ") of the same layer (per-head eviction such as snapkv or h2o); use skvq:scope=head "
          "after per-head evict stages");
    }
  }

  SkvqOptions opt_;
  int d_, hkv_;
  int64_t sinks_, window_;
  int meta_bits_;
  bool reorder_;               // reorder=true with more than one group per unit
  StoredDType ctx_dtype_;      // the trace's: float32 rows are rounded to fp16
  bool acted_ = false;         // some token left the sink/window and was quantized
  std::vector<Layer> layers_;  // [local layer]
  std::vector<Head> heads_;    // [local layer * kv heads]
  std::vector<Rope> ropes_;    // [local layer], prerope only
  std::vector<float> unit_in_, unit_out_, buf_, hat_;
};

std::shared_ptr<const PolicyState> skvq_prepare(const Params& p, const CalibrationSource& trace) {
  const SkvqOptions opt = SkvqOptions::from_params(p);
  auto state = std::make_shared<SkvqPrepared>();
  const std::string& path = p.get_string("calib");
  if (!path.empty()) {  // validated even where it is not needed
    auto file = std::make_shared<SkvqCalibration>(trace.load_skvq_calibration(path));
    check_skvq_calibration(*file, opt);
    state->file = std::move(file);
    return state;
  }
  if (!opt.needs_calibration(trace.meta())) return nullptr;
  const int S = trace.num_sequences();
  if (S < 2) {
    throw ConfigError(
        "skvq: reorder/clip_search need calibration data held out from the scored tokens, and "
        "this trace has a single sequence (leave-one-out calibrates sequence s on the others). "
        "Calibrate on another trace of the same model with `kvsim calibrate` and pass "
        "skvq:calib=PATH, or use skvq:reorder=false,clip_search=false (no calibration)");
  }
  const int64_t n_sample = skvq_samples_per_sequence(opt, static_cast<size_t>(S - 1));
  for (int s = 0; s < S; ++s) {
    state->per_sequence.push_back(collect_skvq_stats(trace, s, opt, n_sample));
  }
  return state;
}

PolicyInfo skvq_info() {
  PolicyInfo info = policy_info<SkvqStore>(
      "skvq", StageKind::kQuantize,
      "sliding-window quantization: fp16 sinks + window, clipped per-group quantization of "
      "reordered channels (SKVQ)",
      {
          ParamSpec::Float("k_bits", 2, 1, 8, "key bits: an integer 1..8, or 1.5 (ternary)"),
          ParamSpec::Float("v_bits", 2, 1, 8, "value bits: an integer 1..8, or 1.5 (ternary)"),
          ParamSpec::Int(
              "group", 128, 1, 1 << 20,
              "g: channels per group on average; unit_dim/g groups (must divide unit_dim)"),
          ParamSpec::Int("window", 128, 0, 1 << 30, "w: most recent tokens kept in fp16"),
          ParamSpec::Int("sinks", 5, 0, 1 << 30, "S: first tokens kept in fp16 (attention sinks)"),
          ParamSpec::Float("clip", 0.92, 0.01, 1,
                           "unified clip ratio a (gmin = a*min, gmax = a*max)"),
          ParamSpec::Bool("clip_search", false,
                          "search a clip ratio per group (grid 1.00..0.50) on calibration data"),
          ParamSpec::Enum("meta", "fp16", {"fp16", "fp8"}, "precision of scales and zero points"),
          ParamSpec::Bool("reorder", true, "k-means channel reordering (needs calibration)"),
          ParamSpec::Enum("scope", "head", {"head", "layer"},
                          "channels grouped together: one KV head's, or all KV heads' of a layer "
                          "(official; needs the same tokens in every head)"),
          ParamSpec::String(
              "calib", "",
              "calibration file from `kvsim calibrate`; empty = leave-one-out over the "
              "trace's other sequences"),
          ParamSpec::Int("calib_tokens", 512, 1, 1 << 24,
                         "tokens sampled over the calibration sequences for clip_search"),
          ParamSpec::Bool("prerope", false,
                          "quantize keys before RoPE (official code): undone and re-applied at "
                          "the key's position; calibration on pre-RoPE keys"),
      });
  info.check = [](const Params& p) {
    (void)BitWidth::parse(p.get_float("k_bits"), "skvq: k_bits");
    (void)BitWidth::parse(p.get_float("v_bits"), "skvq: v_bits");
  };
  info.check_trace = [](const Params& p, const TraceMeta& meta) {
    const SkvqOptions opt = SkvqOptions::from_params(p);
    const int du = opt.unit_dim(meta);
    if (opt.group > du || du % opt.group != 0) {
      throw ConfigError("skvq: group=" + std::to_string(opt.group) + " must divide the " +
                        std::to_string(du) + " channels of a " +
                        (opt.scope == SkvqScope::kHead ? "KV head (scope=head)"
                                                       : "layer's KV heads (scope=layer)"));
    }
    if (opt.prerope) {
      try {
        for (int slot = 0; slot < meta.num_layers(); ++slot) (void)Rope::for_slot(meta, slot);
      } catch (const ConfigError& e) {
        throw ConfigError(std::string("skvq: prerope=true: ") + e.what() +
                          "; use prerope=false (post-RoPE keys)");
      }
    }
  };
  info.prepare = skvq_prepare;
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(skvq_info());
}  // namespace kvsim
