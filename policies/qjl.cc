// `qjl` (Zandieh et al., 2024, arXiv 2406.03482; methods.md "QJL"): keys as 1-bit signs of a
// Johnson-Lindenstrauss projection with an unbiased inner-product estimator; values quantized
// per token.
//
//   Projection S (m x d): Gaussian rows, orthogonalized in blocks of d rows (Gram-Schmidt of
//   each d x d block, rows scaled to norm sqrt(d); orthogonal=false keeps i.i.d. Gaussian
//   rows), one S per layer class (the first `early_layers` original layers use m_early and
//   m_o_early), from `seed`: S regenerates from the seed, so it costs 0 bits.
//   Outlier channels: per group of `group` consecutive quantized keys of a KV head, the n_o
//   channels of largest L2 norm over the group (ties: the lower channel). k = k_in + k_out.
//   Stored per key: sign(S k_in) (m bits), sign(S_o k_out) over the first m_o rows of S
//   (m_o bits; sign(0) = -1, the kernel's x > 0 bit), |k| and |k_out| in fp16.
//   Estimator: <q,k> ~ sqrt(pi/2)/m |k_in| sum_j (S q_in)_j sgn_j
//                      + sqrt(pi/2)/m_o |k_out| sum_{j<m_o} (S q_out)_j sgn_o_j,
//   |k_in| = sqrt(|k|^2 - |k_out|^2). It is linear in q, so the cache holds the key
//   k^ = sqrt(pi/2)/m |k_in| P_in S^T sgn + sqrt(pi/2)/m_o |k_out| P_out S_o^T sgn_o
//   (P_in, P_out: the restrictions to the in/outlier channels), and the engine's q . k^ IS the
//   estimator.
//   Streaming (buffer R): after prefill the first P - (P mod R) keys are quantized; a decode
//   step that brings the fp16 keys to R quantizes all of them before its query attends (0..R-1
//   fp16 keys at attention). Values: per token, b_v bits in groups of `v_group` channels, fp16
//   (scale, min) each; after prefill all but the last R; a FIFO keeps the R newest in fp16 and
//   the oldest of R+1 is quantized at the next step, i.e. after this step's attention.
//
// Memory per token and KV head: keys m + m_o bits (data) + 32 (the two norms, meta) + 8 n_o
// per key group (uint8 channel indices, meta; freed with the group's last live key); values
// b_v d (data) + 32 per value group (meta); fp16 keys and values 16 per element (data).
#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <numbers>
#include <numeric>

#include "policies/quantizer.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

// [m, d] row-major: Gaussian rows, orthogonalized per block of d rows unless !orthogonal.
std::vector<double> make_projection(int m, int d, bool orthogonal, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> s(static_cast<size_t>(m) * d);
  for (double& x : s) x = rng.normal();
  if (!orthogonal) return s;
  for (int row = 0; row < m; ++row) {
    double* r = s.data() + static_cast<size_t>(row) * d;
    for (int prev = row - row % d; prev < row; ++prev) {
      const double* p = s.data() + static_cast<size_t>(prev) * d;
      double dot = 0;
      for (int c = 0; c < d; ++c) dot += r[c] * p[c];
      for (int c = 0; c < d; ++c) r[c] -= dot * p[c] / d;  // p has norm sqrt(d)
    }
    double norm = 0;
    for (int c = 0; c < d; ++c) norm += r[c] * r[c];
    const double scale = std::sqrt(d / norm);
    for (int c = 0; c < d; ++c) r[c] *= scale;
  }
  return s;
}

class QjlStore final : public StoreStage {
 public:
  QjlStore(const Params& p, const ShardContext& ctx)
      : dtype_(ctx.meta->dtype),
        d_(ctx.meta->head_dim),
        n_o_(static_cast<int>(p.get_int("n_o"))),
        group_(static_cast<size_t>(p.get_int("group"))),
        buffer_(static_cast<size_t>(p.get_int("buffer"))) {
    const int v_bits = static_cast<int>(p.get_int("v_bits"));
    const int v_group = static_cast<int>(p.get_int("v_group"));
    for (size_t local = 0; local < ctx.slots.size(); ++local) {
      const bool early = ctx.original_layer(static_cast<int>(local)) < p.get_int("early_layers");
      Layer L;
      L.m = static_cast<int>(p.get_int(early ? "m_early" : "m"));
      L.m_o = static_cast<int>(p.get_int(early ? "m_o_early" : "m_o"));
      L.s = make_projection(std::max(L.m, L.m_o), d_, p.get_bool("orthogonal"),
                            derive_seed(static_cast<uint64_t>(p.get_int("seed")), early ? 0 : 1));
      layers_.push_back(std::move(L));
    }
    heads_ = PerHead<Head>(ctx, Head(TokenwiseSide(d_, v_bits, v_group)));
  }

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool prefill) override {
    Head& s = heads_(layer, head);
    if (!prefill) flush_values(s, cache);  // the oldest of R+1, after last step's attention
    for (int32_t pos : positions) {
      append_16bit_row(cache, raw, head, pos, dtype_);
      s.key_buffer.push_back(pos);
      s.value_buffer.push_back(pos);
    }
    const size_t whole = s.key_buffer.size() - s.key_buffer.size() % buffer_;
    if (whole > 0) quantize_keys(layers_[layer], s, cache, whole);  // before attention
    if (prefill) flush_values(s, cache);
  }

  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    Head& s = heads_(layer, head);
    for (int32_t pos : positions) {
      if (auto it = std::find(s.key_buffer.begin(), s.key_buffer.end(), pos);
          it != s.key_buffer.end()) {
        s.key_buffer.erase(it);
      } else {
        const auto g = s.key_group.find(pos);
        KVSIM_CHECK(g != s.key_group.end());
        --s.quantized_keys;
        if (--s.group_live[g->second] == 0) --s.groups_alive;
      }
      if (auto it = std::find(s.value_buffer.begin(), s.value_buffer.end(), pos);
          it != s.value_buffer.end()) {
        s.value_buffer.erase(it);
      } else {
        s.values.count(-1);
      }
    }
  }

  MemoryBits memory(int layer, int head) const override {
    const Head& s = heads_(layer, head);
    const Layer& L = layers_[layer];
    const MemoryBits v = s.values.memory();
    const auto fp16_rows = static_cast<int64_t>(s.key_buffer.size() + s.value_buffer.size());
    return {fp16_rows * d_ * 16 + s.quantized_keys * (L.m + L.m_o) + v.data,
            s.quantized_keys * 32 + s.groups_alive * 8 * n_o_ + v.meta};
  }
  bool acted() const override { return acted_; }

 private:
  struct Layer {
    int m = 0, m_o = 0;
    std::vector<double> s;  // [max(m, m_o), d]
  };
  struct Head {
    explicit Head(TokenwiseSide v) : values(v) {}
    TokenwiseSide values;
    std::deque<int32_t> key_buffer, value_buffer;  // fp16, oldest first
    std::map<int32_t, size_t> key_group;           // quantized key -> its group
    std::vector<int64_t> group_live;
    int64_t quantized_keys = 0, groups_alive = 0;
  };

  // Quantizes the oldest `count` fp16 keys, `group_` per outlier group.
  void quantize_keys(const Layer& L, Head& s, HeadCache& cache, size_t count) {
    for (size_t start = 0; start < count; start += group_) {
      const size_t n = std::min(group_, count - start);
      std::vector<int64_t> rows;
      for (size_t i = 0; i < n; ++i) {
        rows.push_back(cache.find(s.key_buffer[i]));
        KVSIM_CHECK(rows.back() >= 0);
        s.key_group[s.key_buffer[i]] = s.group_live.size();
      }
      s.key_buffer.erase(s.key_buffer.begin(), s.key_buffer.begin() + static_cast<long>(n));
      // The n_o channels of largest norm over the group.
      std::vector<double> norm(d_, 0.0);
      for (int64_t r : rows) {
        for (int c = 0; c < d_; ++c)
          norm[c] += static_cast<double>(cache.key_row(r)[c]) * cache.key_row(r)[c];
      }
      std::vector<int> order(d_);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return norm[a] > norm[b]; });
      std::vector<uint8_t> outlier(d_, 0);
      for (int i = 0; i < std::min(n_o_, d_); ++i) outlier[order[i]] = 1;
      for (int64_t r : rows) encode_key(L, outlier, cache.key_row(r));
      s.group_live.push_back(static_cast<int64_t>(n));
      ++s.groups_alive;
      s.quantized_keys += static_cast<int64_t>(n);
    }
    acted_ = true;
  }

  // k <- the estimator's key k^ (see the top of the file).
  void encode_key(const Layer& L, const std::vector<uint8_t>& outlier, float* k) const {
    double norm2 = 0, out2 = 0;
    for (int c = 0; c < d_; ++c) {
      norm2 += static_cast<double>(k[c]) * k[c];
      if (outlier[c]) out2 += static_cast<double>(k[c]) * k[c];
    }
    const double norm = round_to_half(static_cast<float>(std::sqrt(norm2)));
    const double norm_out = round_to_half(static_cast<float>(std::sqrt(out2)));
    const double norm_in = std::sqrt(std::max(0.0, norm * norm - norm_out * norm_out));
    std::vector<double> hat(d_, 0.0);
    const double c_in = std::sqrt(std::numbers::pi / 2) / L.m * norm_in;
    const double c_out = std::sqrt(std::numbers::pi / 2) / L.m_o * norm_out;
    for (int j = 0; j < std::max(L.m, L.m_o); ++j) {
      const double* row = L.s.data() + static_cast<size_t>(j) * d_;
      double in = 0, out = 0;
      for (int c = 0; c < d_; ++c) (outlier[c] ? out : in) += row[c] * k[c];
      const double sgn_in = in > 0 ? 1.0 : -1.0, sgn_out = out > 0 ? 1.0 : -1.0;
      for (int c = 0; c < d_; ++c) {
        if (!outlier[c] && j < L.m) hat[c] += c_in * sgn_in * row[c];
        if (outlier[c] && j < L.m_o) hat[c] += c_out * sgn_out * row[c];
      }
    }
    for (int c = 0; c < d_; ++c) k[c] = static_cast<float>(hat[c]);
  }

  void flush_values(Head& s, HeadCache& cache) {
    if (quantize_oldest(s.value_buffer, buffer_, s.values, cache)) acted_ = true;
  }

  StoredDType dtype_;
  int d_, n_o_;
  size_t group_, buffer_;
  std::vector<Layer> layers_;  // [local layer]
  PerHead<Head> heads_;
  bool acted_ = false;
};

PolicyInfo qjl_info() {
  PolicyInfo info = policy_info<QjlStore>(
      "qjl", StageKind::kQuantize,
      "keys as 1-bit signs of a JL projection (unbiased inner products), values per token "
      "(QJL)",
      {
          ParamSpec::Int("m", 256, 1, 1 << 16, "sketch rows for keys"),
          ParamSpec::Int("m_o", 256, 1, 1 << 16, "sketch rows for the outlier channels"),
          ParamSpec::Int("m_early", 512, 1, 1 << 16, "m in the first early_layers layers"),
          ParamSpec::Int("m_o_early", 128, 1, 1 << 16, "m_o in the first early_layers layers"),
          ParamSpec::Int("early_layers", 15, 0, 1 << 12, "original layers that use m_early"),
          ParamSpec::Int("n_o", 8, 0, 255, "outlier channels per key group"),
          ParamSpec::Int("group", 32, 1, 1 << 20, "keys per outlier group"),
          ParamSpec::Int("v_bits", 2, 1, 8, "b_v: value bits"),
          ParamSpec::Int("v_group", 32, 1, 1 << 20, "channels per value group"),
          ParamSpec::Int("buffer", 128, 1, 1 << 30,
                         "R: fp16 keys (0..R-1) and values (R) kept recent; a multiple of group"),
          ParamSpec::Int("seed", 42, 0, int64_t{1} << 62, "seed of the projection"),
          ParamSpec::Bool("orthogonal", true,
                          "orthogonalize S in blocks of head_dim rows (false: i.i.d. Gaussian)"),
      });
  info.check = [](const Params& p) {
    if (p.get_int("buffer") % p.get_int("group") != 0) {
      throw ConfigError("qjl: buffer=" + std::to_string(p.get_int("buffer")) +
                        " must be a multiple of group=" + std::to_string(p.get_int("group")));
    }
  };
  info.check_trace = [](const Params& p, const TraceMeta& meta) {
    const int64_t g = p.get_int("v_group");
    if (g > meta.head_dim || meta.head_dim % g != 0) {
      throw ConfigError("qjl: v_group=" + std::to_string(g) +
                        " must divide head_dim=" + std::to_string(meta.head_dim));
    }
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(qjl_info());
}  // namespace kvsim
