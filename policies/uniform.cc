// `uniform`: the plain asymmetric round-to-nearest baseline (methods.md), for
// keys and values separately along either axis:
//   token:   each token's head_dim channels in groups of `group` channels,
//            quantized as soon as the token arrives;
//   channel: `group` consecutive tokens share one (scale, min) per channel; a
//            token waits in fp16 until its group of `group` tokens is complete.
// Memory: b bits per quantized element plus 32 bits (fp16 scale + min) per
// group; fp16 for tokens still waiting. Evicted tokens free their codes, and a
// group's metadata is freed with its last token.
#include <algorithm>

#include "policies/quantizer.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

class UniformStore final : public StoreStage {
 public:
  UniformStore(const Params& p, const ShardContext& ctx)
      : key_axis_(parse_axis(p.get_string("k_axis"))),
        value_axis_(parse_axis(p.get_string("v_axis"))) {
    const int d = ctx.meta->head_dim;
    const int bits = static_cast<int>(p.get_int("bits"));
    const int group = static_cast<int>(p.get_int("group"));
    for (size_t l = 0; l < ctx.slots.size(); ++l) {
      for (int h = 0; h < ctx.meta->num_kv_heads; ++h) {
        heads_.push_back({TokenwiseSide(d, bits, group), TokenwiseSide(d, bits, group),
                          ChannelwiseSide(d, bits, group, true),
                          ChannelwiseSide(d, bits, group, false)});
      }
    }
    num_kv_heads_ = ctx.meta->num_kv_heads;
    group_ = group;
  }

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool /*prefill*/) override {
    Head& s = at(layer, head);
    for (int32_t pos : positions) {
      cache.append(pos, raw.key(head, pos), raw.value(head, pos));
      const size_t row = cache.size() - 1;
      add(s, QuantAxis::kToken == key_axis_, true, cache, row, pos);
      add(s, QuantAxis::kToken == value_axis_, false, cache, row, pos);
    }
  }

  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    Head& s = at(layer, head);
    const auto n = static_cast<int64_t>(positions.size());
    if (key_axis_ == QuantAxis::kToken)
      s.key_tokens.count(-n);
    else
      s.key_channels.removed(positions);
    if (value_axis_ == QuantAxis::kToken)
      s.value_tokens.count(-n);
    else
      s.value_channels.removed(positions);
  }

  MemoryBits memory(int layer, int head) const override {
    const Head& s = heads_[layer * num_kv_heads_ + head];
    const MemoryBits k =
        key_axis_ == QuantAxis::kToken ? s.key_tokens.memory() : s.key_channels.memory();
    const MemoryBits v =
        value_axis_ == QuantAxis::kToken ? s.value_tokens.memory() : s.value_channels.memory();
    return {k.data + v.data, k.meta + v.meta};
  }
  bool acted() const override { return acted_; }
  // A per-token row is quantized once, when it arrives; a per-channel one when its group of
  // tokens fills up, and the pending rows are the newest. Every older row is final.
  size_t final_rows(int layer, int head, const HeadCache& cache) const override {
    const Head& s = heads_[layer * num_kv_heads_ + head];
    const size_t key_pending = key_axis_ == QuantAxis::kToken ? 0 : s.key_channels.pending();
    const size_t value_pending = value_axis_ == QuantAxis::kToken ? 0 : s.value_channels.pending();
    return cache.size() - std::min(cache.size(), std::max(key_pending, value_pending));
  }

 private:
  struct Head {
    TokenwiseSide key_tokens, value_tokens;
    ChannelwiseSide key_channels, value_channels;
  };
  Head& at(int layer, int head) { return heads_[layer * num_kv_heads_ + head]; }

  void add(Head& s, bool per_token, bool keys, HeadCache& cache, size_t row, int32_t pos) {
    if (per_token) {
      TokenwiseSide& side = keys ? s.key_tokens : s.value_tokens;
      side.encode(keys ? cache.key_row(row) : cache.value_row(row));
      side.count(1);
      acted_ = true;
      return;
    }
    ChannelwiseSide& side = keys ? s.key_channels : s.value_channels;
    side.add_pending(pos);
    if (side.pending() == static_cast<size_t>(group_)) {
      side.flush(cache, group_);
      acted_ = true;
    }
  }

  QuantAxis key_axis_, value_axis_;
  int num_kv_heads_ = 0;
  int group_ = 0;
  bool acted_ = false;  // some row was quantized
  std::vector<Head> heads_;
};

PolicyInfo uniform_info() {
  PolicyInfo info = policy_info<UniformStore>(
      "uniform", StageKind::kQuantize,
      "asymmetric min/max round-to-nearest, per token or per channel (RTN baseline)",
      {
          ParamSpec::Int("bits", 4, 1, 8, "bits per quantized element"),
          ParamSpec::Int(
              "group", 32, 1, 1 << 20,
              "group size: channels per group (token axis) or tokens per group (channel axis)"),
          ParamSpec::Enum("k_axis", "token", {"token", "channel"}, "grouping of keys"),
          ParamSpec::Enum("v_axis", "token", {"token", "channel"}, "grouping of values"),
      });
  info.check_trace = [](const Params& p, const TraceMeta& meta) {
    const int64_t g = p.get_int("group");
    const bool token_axis = p.get_string("k_axis") == "token" || p.get_string("v_axis") == "token";
    if (token_axis && (g > meta.head_dim || meta.head_dim % g != 0)) {
      throw ConfigError("uniform: group=" + std::to_string(g) +
                        " must divide head_dim=" + std::to_string(meta.head_dim) +
                        " when an axis is 'token' (groups run along channels)");
    }
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(uniform_info());
}  // namespace kvsim
