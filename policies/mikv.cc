// `mikv` (Yang et al., 2024, arXiv 2402.18096, "No Token Left Behind"):
// importance-aware mixed precision. No token is evicted: the important tokens
// stay at high precision and the rest are kept at low precision.
//
// Importance (per layer and KV head), `importance=`:
//   h2o    (default) H2O's: attention accumulated over every prefill row and
//          every decode step (the attention of MiKV's own cache, summed over the
//          KV group's query heads); the important set is the `recent` newest
//          tokens plus the top `heavy` others by score.
//   l2norm the `recent` newest plus the `heavy` others with the lowest key norm
//          (the L2-norm paper's finding: low norm = attended).
// A token that leaves the important set is re-quantized to `lo_bits` from its
// high-precision copy; it never returns (its precision is gone) and its score
// is forgotten. Budgets are fractions of the prompt length P, rounded as H2O's
// (evict::fraction_tokens): ceil(heavy * P) and ceil(recent * P) tokens (at
// least one recent), so `mikv` and `h2o` with equal fractions split alike.
//
// Precision: high = fp16 (`hi_bits=16`) or per-token asymmetric INT8/INT4;
// low = per-token asymmetric INT2/3/4, groups of `group` channels (0 = the head
// dim, methods.md's choice for the open group size).
// Outlier-aware channel balancer (`balance=true`), computed from the prompt per
// layer, KV head and channel: s_c = sqrt(max|q_c| / max|k_c|) (fp16), keys are
// quantized as k*s and restored as dequant(k*s)/s, so q.k is unchanged while
// the key outlier channels shrink before quantization.
//
// Memory per (layer, KV head), K and V: high tokens 16 bits (or b_hi + 32/g)
// per element, low tokens b_lo + 32/g, 1 bit per token for the precision map,
// and 16 bits per channel for the balancer scales.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "policies/evict_budget.h"
#include "policies/quantizer.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"

namespace kvsim {
namespace {

class MiKV final : public StoreStage {
 public:
  MiKV(const Params& p, const ShardContext& ctx)
      : dtype_(ctx.meta->dtype),
        d_(ctx.meta->head_dim),
        heads_(ctx.meta->num_kv_heads),
        group_(ctx.meta->num_q_heads / ctx.meta->num_kv_heads),
        hi_bits_(static_cast<int>(p.get_int("hi_bits"))),
        lo_bits_(static_cast<int>(p.get_int("lo_bits"))),
        quant_group_(p.get_int("group") == 0 ? d_ : static_cast<int>(p.get_int("group"))),
        balance_(p.get_bool("balance")),
        by_attention_(p.get_string("importance") == "h2o"),
        heavy_(static_cast<int64_t>(std::ceil(p.get_float("heavy") * ctx.prompt_len))),
        recent_(std::max<int64_t>(
            1, static_cast<int64_t>(std::ceil(p.get_float("recent") * ctx.prompt_len)))),
        state_(ctx.slots.size() * heads_) {
    for (auto& s : state_) {
      s.score.assign(ctx.num_tokens, 0.0);
      s.high.assign(ctx.num_tokens, 0);
      s.scale.assign(d_, 1.f);
    }
  }

  int64_t prefill_attention_rows() const override { return by_attention_ ? -1 : 0; }
  bool needs_decode_attention() const override { return by_attention_; }

  void observe_prefill(int layer, int head, std::span<const int32_t> positions,
                       std::span<const float> attention) override {
    HeadState& s = at(layer, head);
    const size_t n = positions.size();
    for (int j = 0; j < group_; ++j) {
      for (size_t i = 0; i < n; ++i) s.score[positions[i]] += attention[j * n + i];
    }
  }

  void observe(int layer, int head, int64_t, std::span<const int32_t> positions,
               std::span<const float> probs) override {
    HeadState& s = at(layer, head);
    const size_t n = positions.size();
    for (int j = 0; j < group_; ++j) {
      for (size_t i = 0; i < n; ++i) {
        if (s.high[positions[i]]) s.score[positions[i]] += probs[j * n + i];
      }
    }
  }

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool prefill) override {
    HeadState& s = at(layer, head);
    if (prefill) init_balancer(s, head, raw, positions);
    for (int32_t p : positions) {
      if (!by_attention_) s.score[p] = -key_norm(raw.key(head, p));
      append_16bit_row(cache, raw, head, p, dtype_);
      s.high[p] = 1;
      s.important.push_back(p);
      ++s.num_high;
    }
    // Demotions first, so that a token demoted on arrival (the prompt's unimportant
    // ones) is quantized from its 16-bit original, not from a hi_bits copy; then the
    // arrivals still important are stored at hi_bits.
    enforce_budget(s, cache);
    if (hi_bits_ < 16) {
      for (int32_t p : positions) {
        if (!s.high[p]) continue;
        encode(s, cache, static_cast<size_t>(cache.find(p)), hi_bits_);
        acted_ = true;
      }
    }
  }

  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    HeadState& s = at(layer, head);
    for (int32_t p : positions) {
      if (s.high[p]) {
        s.high[p] = 0;
        --s.num_high;
        s.important.erase(std::find(s.important.begin(), s.important.end(), p));
      } else {
        --s.num_low;
      }
    }
  }

  MemoryBits memory(int layer, int head) const override {
    const HeadState& s = state_[layer * heads_ + head];
    const int64_t groups = (d_ + quant_group_ - 1) / quant_group_;
    MemoryBits m;
    const int64_t hi_data = hi_bits_ == 16 ? 16 * d_ : hi_bits_ * d_;
    const int64_t hi_meta = hi_bits_ == 16 ? 0 : 32 * groups;
    m.data = 2 * (s.num_high * hi_data + s.num_low * lo_bits_ * d_);
    m.meta = 2 * (s.num_high * hi_meta + s.num_low * 32 * groups);
    m.meta += s.num_high + s.num_low;  // precision map: one bit per token
    if (balance_) m.meta += 16 * d_;   // balancer scales, fp16 per channel
    return m;
  }

  void report(std::map<std::string, double>& counters) const override {
    double high = 0, low = 0;
    for (const auto& s : state_) high += s.num_high, low += s.num_low;
    counters["mikv.high_tokens_at_end"] += high;
    counters["mikv.low_tokens_at_end"] += low;
  }

  bool acted() const override { return acted_; }

 private:
  struct HeadState {
    std::vector<double> score;       // [T] importance (higher = more important)
    std::vector<uint8_t> high;       // [T] 1 while at high precision
    std::vector<int32_t> important;  // positions at high precision, ascending
    std::vector<float> scale;        // [d] balancer s_c
    int64_t num_high = 0, num_low = 0;
  };

  HeadState& at(int layer, int head) { return state_[layer * heads_ + head]; }

  double key_norm(const float* k) const { return std::sqrt(evict::squared_norm(k, d_)); }

  // s_c = sqrt(max|q_c| / max|k_c|) over the prompt (the first insert).
  void init_balancer(HeadState& s, int head, const LayerData& raw,
                     std::span<const int32_t> positions) {
    if (!balance_ || positions.empty() || raw.q.empty()) return;
    std::vector<double> qmax(d_, 0.0), kmax(d_, 0.0);
    for (int32_t p : positions) {
      const float* k = raw.key(head, p);
      for (int c = 0; c < d_; ++c) kmax[c] = std::max(kmax[c], std::fabs(double(k[c])));
      for (int j = 0; j < group_; ++j) {
        const float* q = raw.query(head * group_ + j, p);
        for (int c = 0; c < d_; ++c) qmax[c] = std::max(qmax[c], std::fabs(double(q[c])));
      }
    }
    for (int c = 0; c < d_; ++c) {
      const double ratio = kmax[c] > 0 && qmax[c] > 0 ? std::sqrt(qmax[c] / kmax[c]) : 1.0;
      s.scale[c] = round_to_half(static_cast<float>(ratio));
      if (!(s.scale[c] > 0) || !std::isfinite(s.scale[c])) s.scale[c] = 1.f;
    }
  }

  // Re-encodes one row at `bits` (per-token groups), keys through the balancer.
  void encode(const HeadState& s, HeadCache& cache, size_t row, int bits) const {
    float* k = cache.key_row(row);
    float* v = cache.value_row(row);
    std::vector<float> scaled(d_);
    for (int c = 0; c < d_; ++c) scaled[c] = k[c] * s.scale[c];
    for (int start = 0; start < d_; start += quant_group_) {
      const int n = std::min(quant_group_, d_ - start);
      quantize_group(scaled.data() + start, n, 1, bits, scaled.data() + start, 1);
      quantize_group(v + start, n, 1, bits, v + start, 1);
    }
    for (int c = 0; c < d_; ++c) k[c] = scaled[c] / s.scale[c];
  }

  // Demotes the least important high-precision tokens until the important set
  // is `recent` newest + `heavy` others.
  void enforce_budget(HeadState& s, HeadCache& cache) {
    const int64_t n = static_cast<int64_t>(s.important.size());
    if (n <= heavy_ + recent_) return;
    // Candidates: every important token except the `recent` newest.
    std::vector<int32_t> older(s.important.begin(), s.important.end() - std::min(recent_, n));
    const int64_t excess = n - heavy_ - recent_;
    // Lowest score first; ties demote the older token first.
    std::stable_sort(older.begin(), older.end(),
                     [&](int32_t a, int32_t b) { return s.score[a] < s.score[b]; });
    older.resize(excess);
    std::sort(older.begin(), older.end());
    for (int32_t p : older) {
      const int64_t row = cache.find(p);
      KVSIM_CHECK(row >= 0);
      encode(s, cache, static_cast<size_t>(row), lo_bits_);
      acted_ = true;
      s.high[p] = 0;
      s.score[p] = 0;  // forgotten
      --s.num_high;
      ++s.num_low;
    }
    std::vector<int32_t> kept;
    kept.reserve(s.important.size() - older.size());
    std::set_difference(s.important.begin(), s.important.end(), older.begin(), older.end(),
                        std::back_inserter(kept));
    s.important.swap(kept);
  }

  StoredDType dtype_;
  int d_, heads_, group_;
  int hi_bits_, lo_bits_, quant_group_;
  bool balance_, by_attention_;
  bool acted_ = false;  // some row was stored below 16 bits
  int64_t heavy_, recent_;
  std::vector<HeadState> state_;
};

PolicyInfo mikv_info() {
  PolicyInfo info = policy_info<MiKV>(
      "mikv", StageKind::kQuantize,
      "important tokens at high precision, the rest at low precision, none evicted (MiKV)",
      {
          ParamSpec::Float("heavy", 0.1, 0.0, 1.0,
                           "heavy hitters kept at high precision (fraction of P)"),
          ParamSpec::Float("recent", 0.1, 0.0, 1.0,
                           "recent tokens kept at high precision (fraction of P)"),
          ParamSpec::Int("hi_bits", 16, 4, 16, "high precision: 16 = fp16, or 4/8-bit per token"),
          ParamSpec::Int("lo_bits", 2, 1, 8, "low precision bits (the paper: 2, 3 or 4)"),
          ParamSpec::Int("group", 0, 0, 1 << 20, "channels per quantization group; 0 = head_dim"),
          ParamSpec::Bool("balance", true, "outlier-aware channel balancer for keys"),
          ParamSpec::Enum("importance", "h2o", {"h2o", "l2norm"},
                          "accumulated attention (H2O) or lowest key norm"),
      });
  info.check = [](const Params& p) {
    const int64_t hi = p.get_int("hi_bits");
    if (hi != 4 && hi != 8 && hi != 16) {
      throw ConfigError("mikv: hi_bits must be 4, 8 or 16 (fp16), got " + std::to_string(hi));
    }
    if (p.get_int("lo_bits") >= hi) throw ConfigError("mikv: lo_bits must be below hi_bits");
  };
  info.check_trace = [](const Params& p, const TraceMeta& meta) {
    const int64_t g = p.get_int("group");
    if (g != 0 && (g > meta.head_dim || meta.head_dim % g != 0)) {
      throw ConfigError("mikv: group=" + std::to_string(g) +
                        " must divide head_dim=" + std::to_string(meta.head_dim));
    }
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(mikv_info());
}  // namespace kvsim
