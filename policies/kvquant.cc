// `kvquant` (Hooper et al., 2024, arXiv 2401.18079; methods.md "KVQuant"): pre-RoPE
// per-channel keys, per-token values, non-uniform levels (nuqX) from calibration, and
// dense-and-sparse outliers kept in fp16 with their indices counted.
//
//   Calibration (held out: sequence s is calibrated on every other sequence of the trace,
//   up to `calib_tokens` tokens each, evenly spaced, sinks left out). Per key channel c of
//   a (layer, kv head): l_c, u_c = the 1-t and t quantiles (linear interpolation) of the
//   pre-RoPE keys, t = 1 - (1 - tau)/2, stored in fp16. nuq: one LUT of 2^b levels per layer
//   for K and one for V, the 1-D k-means (policies/kmeans.h, unweighted: traces have no
//   gradients) of the normalized non-outliers; nuq=false takes 2^b uniform levels on [-1, 1].
//   Keys (static): x = R_p^-1 k (policies/rope.h; prerope=false quantizes the post-RoPE key
//   with post-RoPE thresholds). x outside [l_c, u_c] is an outlier, kept in fp16. Otherwise
//   x~ = (x - (u+l)/2) / ((u-l)/2), the code is the nearest LUT level (the lower on a tie),
//   x^ = LUT * (u-l)/2 + (u+l)/2; then k^ = R_p x^.
//   Values (dynamic, per vector = one KV head's d channels of a token): u, l = the t / 1-t
//   quantiles of the vector; x >= u or x <= l is an outlier (fp16). With the outliers set to
//   the median (the lower middle value, torch.median's), offset = (max+min)/2 and
//   range = (max-min)/2 in fp16; codes as for keys.
//   The first `sinks` tokens stay fp16. Each token is quantized on arrival (no groups, no
//   residual window).
//
// Memory per token and KV head (methods.md): keys b*d + 48 per outlier (16-bit value, int32
// index) + one int32 row pointer; values b*d + 32 (offset, range) + 48 per outlier + one
// int32 pointer; a sink 2*16*d. Codes, outlier values and sinks are `data`; indices,
// pointers and value scales are `meta`. The thresholds and LUTs are static and not counted.
// The counters `kvquant.elements` (quantized elements, K and V), `kvquant.outliers_k` and
// `kvquant.outliers_v` give the paper-style figure b + 32 * outliers / elements (about 32
// bits per outlier, pointers and value scales dropped: docs/policies-quantize.md).
// Composition after evict stages: an evicted token frees all of its bits.
#include <algorithm>
#include <cmath>

#include "policies/kmeans.h"
#include "policies/quantizer.h"
#include "policies/rope.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"

namespace kvsim {
namespace {

// Calibration samples of one sequence and layer slot: [Hkv][n][d] keys (pre-RoPE when
// prerope) and values.
struct KvquantSample {
  int64_t tokens = 0;
  std::vector<float> k, v;
};
struct KvquantPrepared : PolicyState {
  std::vector<std::vector<KvquantSample>> per_sequence;  // [sequence][slot]
};

// The q-quantile of sorted values, linear interpolation (numpy's default).
double quantile(const std::vector<double>& sorted, double q) {
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

// The nearest level of an ascending LUT (the lower on a tie).
float nearest_level(const std::vector<float>& lut, float x) {
  auto it = std::lower_bound(lut.begin(), lut.end(), x);
  if (it == lut.begin()) return lut.front();
  if (it == lut.end()) return lut.back();
  return (*it - x < x - *(it - 1)) ? *it : *(it - 1);
}

// Outliers and normalization of one value vector.
struct VectorRange {
  float lo, hi;         // x <= lo or x >= hi is an outlier
  float offset, range;  // fp16
};
VectorRange value_range(const float* x, int d, double t) {
  std::vector<double> sorted(x, x + d);
  std::sort(sorted.begin(), sorted.end());
  VectorRange r;
  r.hi = static_cast<float>(quantile(sorted, t));
  r.lo = static_cast<float>(quantile(sorted, 1 - t));
  const auto median = static_cast<float>(sorted[(d - 1) / 2]);
  float mn = median, mx = median;
  for (int c = 0; c < d; ++c) {
    const float y = (x[c] >= r.hi || x[c] <= r.lo) ? median : x[c];
    mn = std::min(mn, y);
    mx = std::max(mx, y);
  }
  r.offset = round_to_half(0.5f * (mx + mn));
  r.range = round_to_half(0.5f * (mx - mn));
  return r;
}

struct KvquantOptions {
  int bits;
  double tau, t;
  int64_t sinks;
  bool prerope, nuq;
  int64_t calib_tokens;
  explicit KvquantOptions(const Params& p)
      : bits(static_cast<int>(p.get_int("bits"))),
        tau(p.get_float("tau")),
        t(1 - (1 - tau) / 2),
        sinks(p.get_int("sinks")),
        prerope(p.get_bool("prerope")),
        nuq(p.get_bool("nuq")),
        calib_tokens(p.get_int("calib_tokens")) {}
};

KvquantSample collect_sample(const CalibrationSource& trace, int sequence, int slot,
                             const KvquantOptions& opt) {
  const TraceMeta& meta = trace.meta();
  const LayerData layer = trace.read_layer(sequence, slot);
  const Rope rope = Rope::for_slot(meta, slot);
  const int64_t first = std::min<int64_t>(opt.sinks, layer.num_tokens);
  const int64_t available = layer.num_tokens - first;
  KvquantSample s;
  s.tokens = std::min(available, opt.calib_tokens);
  const int d = meta.head_dim;
  for (int h = 0; h < meta.num_kv_heads; ++h) {
    for (int64_t i = 0; i < s.tokens; ++i) {
      const int64_t t = first + i * available / s.tokens;  // evenly spaced
      std::vector<float> k(layer.key(h, static_cast<int>(t)),
                           layer.key(h, static_cast<int>(t)) + d);
      if (opt.prerope) rope.apply(k.data(), t, /*inverse=*/true);
      s.k.insert(s.k.end(), k.begin(), k.end());
      const float* v = layer.value(h, static_cast<int>(t));
      s.v.insert(s.v.end(), v, v + d);
    }
  }
  return s;
}

std::shared_ptr<const PolicyState> kvquant_prepare(const Params& p,
                                                   const CalibrationSource& trace) {
  const KvquantOptions opt(p);
  const int S = trace.num_sequences();
  if (S < 2) {
    throw ConfigError(
        "kvquant: calibration must be held out from the scored tokens, and this trace has a "
        "single sequence (leave-one-out calibrates sequence s on the others); capture a trace "
        "with more sequences");
  }
  auto state = std::make_shared<KvquantPrepared>();
  for (int s = 0; s < S; ++s) {
    state->per_sequence.emplace_back();
    for (int slot = 0; slot < trace.meta().num_layers(); ++slot) {
      state->per_sequence.back().push_back(collect_sample(trace, s, slot, opt));
    }
  }
  return state;
}

std::vector<float> make_lut(const std::vector<double>& normalized, const KvquantOptions& opt) {
  const int levels = 1 << opt.bits;
  std::vector<float> lut;
  if (!opt.nuq || normalized.empty()) {
    for (int j = 0; j < levels; ++j) lut.push_back(round_to_half(-1.f + 2.f * j / (levels - 1)));
    return lut;
  }
  for (double c : kmeans_1d(normalized, levels))
    lut.push_back(round_to_half(static_cast<float>(c)));
  return lut;
}

class KvquantStore final : public StoreStage {
 public:
  KvquantStore(const Params& p, const ShardContext& ctx)
      : opt_(p), dtype_(ctx.meta->dtype), d_(ctx.meta->head_dim), hkv_(ctx.meta->num_kv_heads) {
    const auto* prepared = dynamic_cast<const KvquantPrepared*>(ctx.prepared.get());
    if (!prepared) throw InternalError("kvquant: no calibration was prepared");
    for (size_t local = 0; local < ctx.slots.size(); ++local) {
      layers_.push_back(calibrate(*prepared, ctx, ctx.slots[local]));
    }
    tokens_.resize(ctx.slots.size() * hkv_);
  }

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool /*prefill*/) override {
    const Layer& L = layers_[layer];
    auto& costs = tokens_[layer * hkv_ + head];
    for (int32_t pos : positions) {
      append_16bit_row(cache, raw, head, pos, dtype_);
      Cost cost;
      if (pos < opt_.sinks) {
        cost.data = 2 * 16 * d_;
      } else {
        const size_t row = cache.size() - 1;
        const int out_k = encode_key(L, head, pos, cache.key_row(row));
        const int out_v = encode_value(L, cache.value_row(row));
        cost.data = 2 * opt_.bits * d_ + 16 * (out_k + out_v);
        cost.meta = 32 * (out_k + out_v) + 32 + 32 + 32;  // indices, 2 row pointers, offset+range
        elements_ += 2 * d_;
        outliers_k_ += out_k;
        outliers_v_ += out_v;
        acted_ = true;
      }
      if (costs.size() <= static_cast<size_t>(pos)) costs.resize(pos + 1);
      costs[pos] = cost;
      total_[layer * hkv_ + head].data += cost.data;
      total_[layer * hkv_ + head].meta += cost.meta;
    }
  }

  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    for (int32_t pos : positions) {
      const Cost& c = tokens_[layer * hkv_ + head].at(pos);
      total_[layer * hkv_ + head].data -= c.data;
      total_[layer * hkv_ + head].meta -= c.meta;
    }
  }

  MemoryBits memory(int layer, int head) const override {
    const auto it = total_.find(layer * hkv_ + head);
    return it == total_.end() ? MemoryBits{} : MemoryBits{it->second.data, it->second.meta};
  }
  bool acted() const override { return acted_; }
  void report(std::map<std::string, double>& counters) const override {
    counters["kvquant.elements"] += static_cast<double>(elements_);
    counters["kvquant.outliers_k"] += static_cast<double>(outliers_k_);
    counters["kvquant.outliers_v"] += static_cast<double>(outliers_v_);
  }

 private:
  struct Layer {
    Rope rope;
    std::vector<float> k_lo, k_hi;  // [Hkv * d] fp16 thresholds
    std::vector<float> k_lut, v_lut;
  };
  struct Cost {
    int64_t data = 0, meta = 0;
  };

  Layer calibrate(const KvquantPrepared& prepared, const ShardContext& ctx, int slot) const {
    Layer L{Rope::for_slot(*ctx.meta, slot), {}, {}, {}, {}};
    std::vector<const KvquantSample*> others;
    for (size_t s = 0; s < prepared.per_sequence.size(); ++s) {
      if (static_cast<int>(s) != ctx.sequence) others.push_back(&prepared.per_sequence[s][slot]);
    }
    std::vector<double> k_norm, v_norm;
    for (int h = 0; h < hkv_; ++h) {
      for (int c = 0; c < d_; ++c) {
        std::vector<double> xs;
        for (const auto* s : others) {
          for (int64_t i = 0; i < s->tokens; ++i)
            xs.push_back(s->k[((h * s->tokens) + i) * d_ + c]);
        }
        if (xs.empty()) {
          throw ConfigError(
              "kvquant: the held-out sequences leave no calibration tokens "
              "(every token is a sink)");
        }
        std::sort(xs.begin(), xs.end());
        const float lo = round_to_half(static_cast<float>(quantile(xs, 1 - opt_.t)));
        const float hi = round_to_half(static_cast<float>(quantile(xs, opt_.t)));
        L.k_lo.push_back(lo);
        L.k_hi.push_back(hi);
        for (double x : xs) {
          if (x >= lo && x <= hi && hi > lo)
            k_norm.push_back((x - (hi + lo) / 2) / ((hi - lo) / 2));
        }
      }
      for (const auto* s : others) {
        for (int64_t i = 0; i < s->tokens; ++i) {
          const float* x = s->v.data() + ((h * s->tokens) + i) * d_;
          const VectorRange r = value_range(x, d_, opt_.t);
          if (r.range <= 0) continue;
          for (int c = 0; c < d_; ++c) {
            if (x[c] < r.hi && x[c] > r.lo) v_norm.push_back((x[c] - r.offset) / r.range);
          }
        }
      }
    }
    L.k_lut = make_lut(k_norm, opt_);
    L.v_lut = make_lut(v_norm, opt_);
    return L;
  }

  // Quantizes a key row in place; returns its outliers.
  int encode_key(const Layer& L, int head, int32_t pos, float* k) const {
    if (opt_.prerope) L.rope.apply(k, pos, /*inverse=*/true);
    int outliers = 0;
    for (int c = 0; c < d_; ++c) {
      const float lo = L.k_lo[head * d_ + c], hi = L.k_hi[head * d_ + c];
      if (k[c] < lo || k[c] > hi) {
        k[c] = round_to_half(k[c]);
        ++outliers;
        continue;
      }
      const float mid = (hi + lo) / 2, half = (hi - lo) / 2;
      k[c] = half > 0 ? nearest_level(L.k_lut, (k[c] - mid) / half) * half + mid : mid;
    }
    if (opt_.prerope) L.rope.apply(k, pos, /*inverse=*/false);
    return outliers;
  }

  int encode_value(const Layer& L, float* v) const {
    const VectorRange r = value_range(v, d_, opt_.t);
    int outliers = 0;
    for (int c = 0; c < d_; ++c) {
      if (v[c] >= r.hi || v[c] <= r.lo) {
        v[c] = round_to_half(v[c]);
        ++outliers;
      } else {
        v[c] = r.range > 0
                   ? nearest_level(L.v_lut, (v[c] - r.offset) / r.range) * r.range + r.offset
                   : r.offset;
      }
    }
    return outliers;
  }

  KvquantOptions opt_;
  StoredDType dtype_;
  int d_, hkv_;
  std::vector<Layer> layers_;              // [local layer]
  std::vector<std::vector<Cost>> tokens_;  // [local layer * kv heads][position]
  std::map<int, Cost> total_;              // live bits per local layer * kv heads + head
  int64_t elements_ = 0, outliers_k_ = 0, outliers_v_ = 0;
  bool acted_ = false;
};

PolicyInfo kvquant_info() {
  PolicyInfo info = policy_info<KvquantStore>(
      "kvquant", StageKind::kQuantize,
      "pre-RoPE per-channel keys, per-token values, non-uniform levels from calibration, "
      "fp16 dense-and-sparse outliers (KVQuant)",
      {
          ParamSpec::Int("bits", 3, 1, 8, "b: bits per element (nuq3 is the headline)"),
          ParamSpec::Float("tau", 0.99, 0.5, 1,
                           "share of elements inside the thresholds (0.99: 1% outliers)"),
          ParamSpec::Int("sinks", 0, 0, 1 << 30, "first tokens kept in fp16 (first_few_fp16)"),
          ParamSpec::Bool(
              "prerope", true,
              "quantize keys before RoPE (undone and re-applied at the key's position)"),
          ParamSpec::Bool("nuq", true,
                          "non-uniform levels (k-means of calibration data); false: uniform"),
          ParamSpec::Int("calib_tokens", 512, 1, 1 << 24,
                         "calibration tokens per held-out sequence (evenly spaced)"),
      });
  info.check_trace = [](const Params& p, const TraceMeta& meta) {
    if (p.get_bool("prerope")) {
      for (int slot = 0; slot < meta.num_layers(); ++slot) (void)Rope::for_slot(meta, slot);
    }
  };
  info.prepare = kvquant_prepare;
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(kvquant_info());
}  // namespace kvsim
