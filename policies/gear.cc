// `gear` (Kang et al., 2024, arXiv 2403.05527; methods.md "GEAR"): uniform quantization plus
// a low-rank approximation of its residual plus sparse outliers, per (layer, kv head), K and V
// alike, in chunks.
//
//   Chunks: after prefill the first P - (P mod n_b) tokens form one chunk (rank r_prefill);
//   the rest stay fp16 in a buffer. A buffer that has reached n_b live tokens is compressed as
//   one chunk (rank r) at the next insert, i.e. after that step's attention (the CUDA code's
//   stream chunks), so 1..n_b fp16 tokens remain when attending.
//   A chunk X (T_c x d):
//   1. Sparse S: in each vector (V: a token's d channels; K: a channel over the chunk's T_c
//      tokens) the floor(s*n/2) largest and floor(s*n/2) smallest entries (n = the vector's
//      length; ties: the lower index counts as the smaller) are outliers, kept in fp16, and
//      replaced by the vector's mean before quantizing.
//   2. D^: backbone=kivi quantizes keys per channel in groups of G tokens and values per token
//      in groups of G channels; backbone=kcvt keys per channel over the whole chunk and values
//      per token over all d channels (policies/quantizer.h, 2^b - 1 steps, fp16 scale + min).
//   3. L: rank r approximation of E = X_filled - D^ by power iteration: P (d x r) uniform in
//      [0, 1) from the shard's seed; `loop` times Q = E P, P = E^T Q, the last pass
//      orthonormalizing P before the first product and Q after it (Gram-Schmidt); L = Q P^T
//      with Q and P rounded to fp16 (as stored).
//   4. X^ = D^ + L, outliers overwritten by their fp16 values.
//
// Memory (bits) per (layer, kv head), K and V each: D^ b per element (data) + 32 per group
// (meta); L 16 r (T_c + d) per chunk (data: 16 r per token for its row of Q, 16 r d per chunk
// for P); each outlier 16 (data) + 32 (an int32 index, meta); the buffer 16 per element.
// Composition after evict stages: an evicted token frees its codes, its row of Q and its
// outliers; a quantization group's scale and min go with its last live token, and P with the
// chunk's last live token. Counter `gear.outliers` / `gear.elements`: the realized outlier
// fraction.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "policies/quantizer.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

struct GearOptions {
  int bits, group, buffer, rank, rank_prefill, loop;
  double outlier_ratio;
  bool kcvt;
  explicit GearOptions(const Params& p)
      : bits(static_cast<int>(p.get_int("bits"))),
        group(static_cast<int>(p.get_int("group"))),
        buffer(static_cast<int>(p.get_int("buffer"))),
        rank(static_cast<int>(p.get_int("rank"))),
        rank_prefill(static_cast<int>(p.get_int("rank_prefill"))),
        loop(static_cast<int>(p.get_int("loop"))),
        outlier_ratio(p.get_float("outliers")),
        kcvt(p.get_string("backbone") == "kcvt") {}
};

// Orthonormalizes the columns of a [rows, r] row-major matrix in place (modified
// Gram-Schmidt; a column that vanishes becomes zero).
void orthonormalize(std::vector<double>& a, size_t rows, int r) {
  for (int j = 0; j < r; ++j) {
    for (int i = 0; i < j; ++i) {
      double dot = 0;
      for (size_t t = 0; t < rows; ++t) dot += a[t * r + i] * a[t * r + j];
      for (size_t t = 0; t < rows; ++t) a[t * r + j] -= dot * a[t * r + i];
    }
    double norm = 0;
    for (size_t t = 0; t < rows; ++t) norm += a[t * r + j] * a[t * r + j];
    norm = std::sqrt(norm);
    for (size_t t = 0; t < rows; ++t) a[t * r + j] = norm > 1e-30 ? a[t * r + j] / norm : 0.0;
  }
}

// Compresses one chunk x [n, d] in place (steps 1-4); `keys` selects the sparse and backbone
// axes. Sets outlier[i] for the elements kept exact and returns their number.
int compress_chunk(std::vector<float>& x, int n, int d, bool keys, int rank, const GearOptions& opt,
                   uint64_t seed, std::vector<uint8_t>& outlier) {
  // 1. Sparse outliers per vector: keys per channel (stride d), values per token (stride 1).
  const int vectors = keys ? d : n, length = keys ? n : d;
  const size_t stride = keys ? d : 1, step = keys ? 1 : d;
  const int per_side = static_cast<int>(std::floor(opt.outlier_ratio * length / 2));
  outlier.assign(x.size(), 0);
  std::vector<float> exact = x;
  int outliers = 0;
  for (int v = 0; v < vectors; ++v) {
    float* base = x.data() + v * step;
    if (per_side > 0) {
      double sum = 0;
      for (int i = 0; i < length; ++i) sum += base[i * stride];
      const auto mean = static_cast<float>(sum / length);
      std::vector<int> order(length);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return base[a * stride] < base[b * stride]; });
      for (int i = 0; i < per_side; ++i) {
        for (int idx : {order[i], order[length - 1 - i]}) {
          const size_t e = v * step + idx * stride;
          if (outlier[e]) continue;
          outlier[e] = 1;
          ++outliers;
        }
      }
      for (int i = 0; i < length; ++i) {
        if (outlier[v * step + i * stride]) base[i * stride] = mean;
      }
    }
  }
  // 2. Backbone D^.
  std::vector<float> filled = x;
  if (keys) {
    const int g = opt.kcvt ? n : opt.group;
    for (int start = 0; start < n; start += g) {
      const int len = std::min(g, n - start);
      for (int c = 0; c < d; ++c) {
        float* p = x.data() + static_cast<size_t>(start) * d + c;
        quantize_group(p, len, d, opt.bits, p, d);
      }
    }
  } else {
    const int g = opt.kcvt ? d : opt.group;
    for (int t = 0; t < n; ++t) {
      for (int start = 0; start < d; start += g) {
        float* p = x.data() + static_cast<size_t>(t) * d + start;
        quantize_group(p, std::min(g, d - start), 1, opt.bits, p, 1);
      }
    }
  }
  // 3. Low rank L of E = filled - D^ by power iteration.
  const int r = std::min({rank, n, d});
  if (r > 0) {
    std::vector<double> e(x.size());
    for (size_t i = 0; i < x.size(); ++i) e[i] = static_cast<double>(filled[i]) - x[i];
    std::vector<double> P(static_cast<size_t>(d) * r), Q(static_cast<size_t>(n) * r);
    Rng rng(seed);
    for (double& p : P) p = rng.uniform();
    for (int it = 0; it < opt.loop; ++it) {
      const bool last = it + 1 == opt.loop;
      if (last) orthonormalize(P, d, r);
      std::fill(Q.begin(), Q.end(), 0.0);
      for (int t = 0; t < n; ++t) {
        for (int c = 0; c < d; ++c) {
          const double et = e[static_cast<size_t>(t) * d + c];
          for (int j = 0; j < r; ++j) Q[t * r + j] += et * P[c * r + j];
        }
      }
      if (last) orthonormalize(Q, n, r);
      std::fill(P.begin(), P.end(), 0.0);
      for (int t = 0; t < n; ++t) {
        for (int c = 0; c < d; ++c) {
          const double et = e[static_cast<size_t>(t) * d + c];
          for (int j = 0; j < r; ++j) P[c * r + j] += et * Q[t * r + j];
        }
      }
    }
    for (double& q : Q) q = round_to_half(static_cast<float>(q));
    for (double& p : P) p = round_to_half(static_cast<float>(p));
    for (int t = 0; t < n; ++t) {
      for (int c = 0; c < d; ++c) {
        double l = 0;
        for (int j = 0; j < r; ++j) l += Q[t * r + j] * P[c * r + j];
        x[static_cast<size_t>(t) * d + c] =
            static_cast<float>(x[static_cast<size_t>(t) * d + c] + l);
      }
    }
  }
  // 4. Outliers exact (fp16).
  for (size_t i = 0; i < x.size(); ++i) {
    if (outlier[i]) x[i] = round_to_half(exact[i]);
  }
  return outliers;
}

class GearStore final : public StoreStage {
 public:
  GearStore(const Params& p, const ShardContext& ctx)
      : opt_(p),
        dtype_(ctx.meta->dtype),
        d_(ctx.meta->head_dim),
        hkv_(ctx.meta->num_kv_heads),
        seed_(ctx.seed),
        heads_(ctx) {}

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool prefill) override {
    Head& s = heads_(layer, head);
    if (!prefill && s.buffer.size() >= static_cast<size_t>(opt_.buffer)) {
      compress(s, cache, layer, head, s.buffer.size(), opt_.rank);  // after last step's attention
    }
    for (int32_t pos : positions) {
      append_16bit_row(cache, raw, head, pos, dtype_);
      s.buffer.push_back(pos);
    }
    if (prefill) {
      const size_t whole = s.buffer.size() - s.buffer.size() % opt_.buffer;
      if (whole > 0) compress(s, cache, layer, head, whole, opt_.rank_prefill);
    }
  }

  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    Head& s = heads_(layer, head);
    for (int32_t pos : positions) {
      auto b = std::find(s.buffer.begin(), s.buffer.end(), pos);
      if (b != s.buffer.end()) {
        s.buffer.erase(b);
        continue;
      }
      for (Chunk& c : s.chunks) {
        auto it = std::lower_bound(c.positions.begin(), c.positions.end(), pos);
        if (it == c.positions.end() || *it != pos || !c.alive[it - c.positions.begin()]) continue;
        const size_t i = it - c.positions.begin();
        c.alive[i] = 0;
        --c.live;
        --c.group_live[opt_.kcvt ? 0 : i / opt_.group];
        break;
      }
    }
  }

  MemoryBits memory(int layer, int head) const override {
    const Head& s = heads_(layer, head);
    MemoryBits m;
    m.data = static_cast<int64_t>(s.buffer.size()) * 2 * d_ * 16;
    const int64_t value_groups = opt_.kcvt ? 1 : d_ / opt_.group;
    for (const Chunk& c : s.chunks) {
      if (c.live == 0) continue;
      int64_t key_groups = 0;
      for (int64_t g : c.group_live) key_groups += g > 0 ? 1 : 0;
      int64_t outliers = 0;
      for (size_t i = 0; i < c.positions.size(); ++i) {
        if (c.alive[i]) outliers += c.token_outliers[i];
      }
      // Codes (K and V), rows of Q (K and V), P (K and V), outliers.
      m.data += c.live * 2 * d_ * opt_.bits + c.live * 16 * (c.rank_k + c.rank_v) +
                16 * static_cast<int64_t>(d_) * (c.rank_k + c.rank_v) + outliers * 16;
      m.meta += key_groups * d_ * 32 + c.live * value_groups * 32 + outliers * 32;
    }
    return m;
  }
  bool acted() const override { return acted_; }
  void report(std::map<std::string, double>& counters) const override {
    counters["gear.elements"] += static_cast<double>(elements_);
    counters["gear.outliers"] += static_cast<double>(outliers_);
  }

 private:
  struct Chunk {
    std::vector<int32_t> positions;       // ascending
    std::vector<uint8_t> alive;           // per position
    std::vector<int64_t> token_outliers;  // K and V outliers attributed to each token
    std::vector<int64_t> group_live;      // live tokens per key group
    int64_t live = 0;
    int rank_k = 0, rank_v = 0;
  };
  struct Head {
    std::vector<int32_t> buffer;  // fp16 tokens, ascending
    std::vector<Chunk> chunks;
  };

  void compress(Head& s, HeadCache& cache, int layer, int head, size_t count, int rank) {
    Chunk c;
    c.positions.assign(s.buffer.begin(), s.buffer.begin() + static_cast<long>(count));
    s.buffer.erase(s.buffer.begin(), s.buffer.begin() + static_cast<long>(count));
    const int n = static_cast<int>(count);
    std::vector<int64_t> rows(n);
    std::vector<float> k(static_cast<size_t>(n) * d_), v(k.size());
    for (int i = 0; i < n; ++i) {
      rows[i] = cache.find(c.positions[i]);
      KVSIM_CHECK(rows[i] >= 0);
      std::copy_n(cache.key_row(rows[i]), d_, k.begin() + static_cast<size_t>(i) * d_);
      std::copy_n(cache.value_row(rows[i]), d_, v.begin() + static_cast<size_t>(i) * d_);
    }
    const uint64_t seed = derive_seed(seed_, layer * hkv_ + head, s.chunks.size());
    std::vector<uint8_t> k_out, v_out;
    const int out_k = compress_chunk(k, n, d_, true, rank, opt_, derive_seed(seed, 0), k_out);
    const int out_v = compress_chunk(v, n, d_, false, rank, opt_, derive_seed(seed, 1), v_out);
    c.token_outliers.assign(n, 0);
    for (int i = 0; i < n; ++i) {
      const size_t at = static_cast<size_t>(i) * d_;
      std::copy_n(k.begin() + at, d_, cache.key_row(rows[i]));
      std::copy_n(v.begin() + at, d_, cache.value_row(rows[i]));
      c.token_outliers[i] = std::accumulate(k_out.begin() + at, k_out.begin() + at + d_, 0) +
                            std::accumulate(v_out.begin() + at, v_out.begin() + at + d_, 0);
    }
    c.alive.assign(n, 1);
    c.live = n;
    c.group_live.assign((n + opt_.group - 1) / opt_.group, 0);
    if (opt_.kcvt) c.group_live.assign(1, 0);
    for (int i = 0; i < n; ++i) ++c.group_live[opt_.kcvt ? 0 : i / opt_.group];
    c.rank_k = c.rank_v = std::min({rank, n, d_});
    elements_ += 2 * static_cast<int64_t>(n) * d_;
    outliers_ += out_k + out_v;
    s.chunks.push_back(std::move(c));
    acted_ = true;
  }

  GearOptions opt_;
  StoredDType dtype_;
  int d_, hkv_;
  uint64_t seed_;
  PerHead<Head> heads_;
  int64_t elements_ = 0, outliers_ = 0;
  bool acted_ = false;
};

PolicyInfo gear_info() {
  PolicyInfo info = policy_info<GearStore>(
      "gear", StageKind::kQuantize,
      "uniform quantization + low-rank residual + sparse fp16 outliers, in chunks (GEAR)",
      {
          ParamSpec::Int("bits", 2, 1, 8, "b: bits of the quantized backbone"),
          ParamSpec::Int("group", 64, 1, 1 << 20,
                         "G: tokens per key group, channels per value group (backbone=kivi)"),
          ParamSpec::Enum("backbone", "kivi", {"kivi", "kcvt"},
                          "kivi: G-groups; kcvt: keys per channel over the chunk, values per "
                          "token over all channels"),
          ParamSpec::Float("outliers", 0.02, 0, 1,
                           "s: share of each vector kept exact (floor(s*n/2) per side)"),
          ParamSpec::Int("rank", 2, 0, 1 << 16, "r: rank of the residual for decode chunks"),
          ParamSpec::Int("rank_prefill", 4, 0, 1 << 16, "rank for the prefill chunk"),
          ParamSpec::Int("loop", 3, 1, 100, "power iterations"),
          ParamSpec::Int("buffer", 64, 1, 1 << 30,
                         "n_b: fp16 tokens compressed together as one chunk (a multiple of G)"),
      });
  info.check = [](const Params& p) {
    const int64_t g = p.get_int("group"), b = p.get_int("buffer");
    if (p.get_string("backbone") == "kivi" && b % g != 0) {
      throw ConfigError("gear: buffer=" + std::to_string(b) + " must be a multiple of group=" +
                        std::to_string(g) + " (a chunk is quantized in whole key groups)");
    }
  };
  info.check_trace = [](const Params& p, const TraceMeta& meta) {
    const int64_t g = p.get_int("group");
    if (p.get_string("backbone") == "kivi" && (g > meta.head_dim || meta.head_dim % g != 0)) {
      throw ConfigError("gear: group=" + std::to_string(g) + " must divide head_dim=" +
                        std::to_string(meta.head_dim) + " (values are grouped along channels)");
    }
  };
  return info;
}

}  // namespace
KVSIM_REGISTER_POLICY(gear_info());
}  // namespace kvsim
