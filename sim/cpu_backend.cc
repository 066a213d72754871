// The CPU attention backend: the exact attention at measured steps, the prefill column sums and
// the attention of policies' caches, with the float kernels of sim/base/attention.h. A batch is
// processed task by task, in order; the scratch buffers are per thread.
#include "sim/cpu_backend.h"

#include <algorithm>
#include <vector>

#include "sim/base/attention.h"
#include "sim/base/errors.h"

namespace kvsim {
namespace {

// Copies the `group` query vectors of kv head h at token t into qbuf[group, d].
void gather_queries(const LayerData& layer, int kv_head, int group, int64_t t, float* qbuf) {
  const int d = layer.head_dim;
  for (int j = 0; j < group; ++j) {
    const float* q = layer.query(kv_head * group + j, static_cast<int>(t));
    std::copy_n(q, d, qbuf + static_cast<size_t>(j) * d);
  }
}

// Exact causal attention of the requested prompt rows, summed per column:
// colsum[j, i] for query head j of the group and candidate i (candidates are
// ascending prompt positions, not necessarily contiguous).
void prefill_column_sums_one(const TraceMeta& meta, const PrefillSumsTask& task) {
  const LayerData& layer = *task.layer;
  const int group = meta.group_size(), d = meta.head_dim;
  const int window = task.window, kv_head = task.kv_head;
  const int64_t prompt_len = task.prompt_len, rows = task.rows;
  const std::span<const int32_t> candidates = task.candidates;
  std::vector<float>& colsum = *task.colsum;
  const int64_t first_row = rows < 0 ? 0 : std::max<int64_t>(0, prompt_len - rows);
  const size_t nc = candidates.size();
  colsum.assign(static_cast<size_t>(group) * nc, 0.f);
  if (candidates.empty()) return;
  std::vector<int32_t> column(prompt_len, -1);  // position -> candidate index
  for (size_t i = 0; i < nc; ++i) column[candidates[i]] = static_cast<int32_t>(i);
  // Rows go in blocks so that every key load serves kRows x group queries; the
  // scores past a row's causal end (or before its window) are masked out.
  constexpr int64_t kRows = 16;
  std::vector<float> qbuf(static_cast<size_t>(kRows) * group * d), scores;
  const KeyTiles keys(layer.key(kv_head, 0), static_cast<size_t>(prompt_len),
                      d);  // reused by every row
  // The common case, nothing evicted before: candidate i is prompt position candidates[0] + i.
  const bool contiguous = static_cast<size_t>(candidates.back() - candidates.front()) + 1 == nc;
  for (int64_t r0 = first_row; r0 < prompt_len; r0 += kRows) {
    const int64_t r1 = std::min(prompt_len, r0 + kRows);
    const int64_t lo = window_start(window, r0);
    const size_t n = static_cast<size_t>(r1 - lo);
    const int nq = static_cast<int>(r1 - r0) * group;
    for (int64_t r = r0; r < r1; ++r) {
      gather_queries(layer, kv_head, group, r, qbuf.data() + (r - r0) * group * d);
    }
    scores.resize(static_cast<size_t>(nq) * n);
    score_tiles(qbuf.data(), nq, keys, static_cast<size_t>(lo), n,
                static_cast<float>(meta.attn_scale), scores.data());
    for (int64_t r = r0; r < r1; ++r) {
      const size_t row_lo = static_cast<size_t>(window_start(window, r) - lo);
      const size_t row_n = static_cast<size_t>(r - lo + 1) - row_lo;
      for (int j = 0; j < group; ++j) {
        float* p = scores.data() + (static_cast<size_t>(r - r0) * group + j) * n + row_lo;
        // softmax_inplace()'s probabilities e_i * (1 / sum), formed as they are added (one pass
        // over the row fewer).
        const float inv = 1.f / exp_inplace_sum(p, row_n, max_value(p, row_n));
        const int64_t first_pos = lo + static_cast<int64_t>(row_lo);
        if (contiguous) {
          // Positions [first_pos, first_pos + row_n) that are candidates, added in place.
          const int64_t from = std::max<int64_t>(first_pos, candidates.front());
          const int64_t to =
              std::min<int64_t>(first_pos + static_cast<int64_t>(row_n), candidates.back() + 1);
          float* sums = colsum.data() + j * nc - candidates.front();
          const float* e = p - first_pos;
#pragma omp simd
          for (int64_t pos = from; pos < to; ++pos) sums[pos] += e[pos] * inv;
          continue;
        }
        for (size_t i = 0; i < row_n; ++i) {
          const int32_t c = column[first_pos + static_cast<int64_t>(i)];
          if (c >= 0) colsum[j * nc + c] += p[i] * inv;
        }
      }
    }
  }
}

// Shared scoring: out[j * n + i] = exact score of query head j at cache position i, taken from
// the task's exact scores; false (nothing written) when there are none or a position lies
// outside them.
bool gather_exact_scores(const CacheAttentionTask& task, int group, float* out) {
  if (task.exact_scores == nullptr) return false;
  const std::span<const int32_t> pos = task.cache->positions;
  const size_t n = pos.size(), count = task.exact_count;
  const int64_t first = task.exact_first;
  if (n == 0) return true;
  int32_t lowest = pos[0], highest = pos[0];
#pragma omp simd reduction(min : lowest) reduction(max : highest)
  for (size_t i = 1; i < n; ++i) {
    lowest = std::min(lowest, pos[i]);
    highest = std::max(highest, pos[i]);
  }
  if (lowest < first || static_cast<size_t>(highest - first) >= count) return false;
  // An eviction-only cache keeps runs of consecutive positions (the recent window, the prompt
  // between evicted tokens): each run is one copy.
  thread_local std::vector<std::pair<size_t, size_t>> runs;  // (first row, rows)
  runs.clear();
  for (size_t i = 0; i < n;) {
    size_t k = i + 1;
    while (k < n && pos[k] == pos[k - 1] + 1) ++k;
    runs.emplace_back(i, k - i);
    i = k;
  }
  for (int j = 0; j < group; ++j) {
    const float* row = task.exact_scores + j * count - first;
    float* dst = out + j * n;
    for (const auto& [i, rows] : runs) {
      if (rows == 1) {
        dst[i] = row[pos[i]];
      } else {
        std::copy_n(row + pos[i], rows, dst + i);
      }
    }
  }
  return true;
}

// Whether the cache attends exactly at a measured step: the exact keys and values over the whole
// exact window (`full`, and eviction before its first eviction). Its outputs, top tokens and
// log-sum-exps are then the exact ones.
bool attends_exactly(const CacheAttentionTask& task) {
  const HeadCache& cache = *task.cache;
  return task.exact_lse != nullptr && task.keys_exact && task.values_exact &&
         task.exact_scores != nullptr && task.exact_out != nullptr && task.exact_top1 != nullptr &&
         cache.size() == task.exact_count && cache.size() > 0 &&
         cache.positions[0] == task.exact_first &&
         cache.positions.back() == task.exact_first + static_cast<int64_t>(task.exact_count) - 1;
}

void cache_attention_one(const TraceMeta& meta, const CacheAttentionTask& task,
                         std::vector<float>& qbuf, std::vector<float>& raw_scores) {
  const int group = meta.group_size(), d = meta.head_dim;
  const float scale = static_cast<float>(meta.attn_scale);
  const HeadCache& cache = *task.cache;
  const LayerData& raw = *task.layer;
  CacheAttention& out = *task.out;
  const size_t n = cache.size();
  const bool measured = task.exact_lse != nullptr;
  if (measured) {
    out.out_hat.resize(static_cast<size_t>(group) * d);
    out.kept_mass.resize(group);
    out.kept_cross.resize(group);
    out.top1.resize(group);
  }
  out.lse_hat.resize(group);
  const bool whole_window = attends_exactly(task);
  if (whole_window && !task.need_probs) {
    // Everything is the exact attention's but the kept mass (~1, summed as below): no scores,
    // softmax or weighted sum. The probabilities are not asked for.
    out.scores.clear();
    out.probs.clear();
    std::copy_n(task.exact_out, out.out_hat.size(), out.out_hat.begin());
    for (int j = 0; j < group; ++j) {
      // The same kernels over the same scores as the exact attention: the same lse, bit for bit.
      out.lse_hat[j] = task.exact_lse[j];
      out.kept_mass[j] =
          exp_sum(task.exact_scores + j * n, n, static_cast<float>(task.exact_lse[j]));
      out.kept_cross[j] = 0.f;  // raw_i = s_i
      out.top1[j] = task.exact_top1[j];
    }
    return;
  }
  qbuf.resize(static_cast<size_t>(group) * d);
  gather_queries(raw, task.kv_head, group, task.step, qbuf.data());
  out.scores.resize(group * n);
  out.probs.resize(group * n);
  // Eviction-only caches: the exact scores of the kept keys, computed once for the unit.
  const bool shared = task.keys_exact && gather_exact_scores(task, group, out.scores.data());
  if (!shared) {
    score_rows(qbuf.data(), group, cache.keys.data(), n, d, scale, out.scores.data(),
               task.key_tiles);
  }
  for (int j = 0; j < group; ++j) {
    out.lse_hat[j] = softmax_into(out.scores.data() + j * n, out.probs.data() + j * n, n);
  }
  if (!measured) return;

  if (whole_window) {
    std::copy_n(task.exact_out, out.out_hat.size(), out.out_hat.begin());
  } else {
    weighted_sum(out.probs.data(), group, cache.values.data(), n, d, out.out_hat.data());
  }
  // The exact scores of the cached positions: the cache's own with exact keys (the same kernel
  // over the same key values, bit for bit), else gathered or scored from the trace's keys.
  const float* raw_of = out.scores.data();
  if (!task.keys_exact) {
    raw_scores.resize(group * n);
    if (!gather_exact_scores(task, group, raw_scores.data())) {
      score_gathered(qbuf.data(), group, raw.key(task.kv_head, 0), cache.positions, d, scale,
                     raw_scores.data());
    }
    raw_of = raw_scores.data();
  }
  // Rows sorted by position (every store's but a merging one's): the lowest position among equal
  // largest scores is the first of them.
  const int32_t* pos = cache.positions.data();
  bool ascending = true;
#pragma omp simd reduction(&& : ascending)
  for (size_t i = 1; i < n; ++i) ascending = ascending && pos[i - 1] < pos[i];
  for (int j = 0; j < group; ++j) {
    // p_i = exp(raw_i - lse) is the exact probability of cached token i; one exp per entry
    // serves both sums of the KL (see docs/replay.md, "Metrics"), in a fixed order.
    const float* rs = raw_of + j * n;
    const float* cs = out.scores.data() + j * n;
    exp_sum_and_cross(rs, cs, n, static_cast<float>(task.exact_lse[j]), &out.kept_mass[j],
                      &out.kept_cross[j]);
    // The compressed top token: largest score, lowest position among equal scores (checked
    // explicitly: a merging store's positions need not ascend).
    if (whole_window) {
      out.top1[j] = task.exact_top1[j];
      continue;
    }
    size_t top = 0;
    if (ascending) {
      top = first_max_index(cs, n);
    } else {
      for (size_t i = 1; i < n; ++i) {
        if (cs[i] > cs[top] || (cs[i] == cs[top] && pos[i] < pos[top])) top = i;
      }
    }
    out.top1[j] = n > 0 ? pos[top] : -1;
  }
}

// Query rows (steps x query heads of a group) that share each key tile and value row of the
// exact attention (32: 8 steps of a group of 4; 16 and 64 were 10% slower and no faster).
constexpr size_t kBlockQueries = 32;

class CpuBackend final : public AttentionBackend {
 public:
  std::string name() const override { return "cpu"; }

  ExactLayer exact_attention(const TraceMeta& meta, const LayerData& layer,
                             std::span<const int64_t> measured) const override {
    const int Hq = meta.num_q_heads, Hkv = meta.num_kv_heads, group = meta.group_size();
    const int d = meta.head_dim, window = meta.sliding_window[layer.slot];
    ExactLayer ex;
    ex.slot = layer.slot;
    ex.out.assign(measured.size() * Hq * d, 0.f);
    ex.lse.assign(measured.size() * Hq, 0.0);
    ex.top1.assign(measured.size() * Hq, -1);
    const size_t last = measured.empty() ? 0 : static_cast<size_t>(measured.back()) + 1;
    std::vector<size_t> offset(measured.size());  // of each step's block in ExactLayer::scores
    size_t score_floats = 0;
    for (size_t m = 0; m < measured.size(); ++m) {
      offset[m] = score_floats;
      score_floats +=
          static_cast<size_t>(Hq) * (measured[m] - window_start(window, measured[m]) + 1);
    }
    if (score_floats * sizeof(float) <= ExactLayer::kMaxScoreBytes) {  // kept when they fit
      ex.scores.resize(score_floats);
      ex.score_offset = offset;
      ex.score_first.resize(measured.size());
      for (size_t m = 0; m < measured.size(); ++m) {
        ex.score_first[m] = window_start(window, measured[m]);
      }
    }
    // Blocks of measured steps that start at the same key and lie close together: their queries
    // (every query head of a kv head's group, at every step of the block) score each key tile
    // and weigh each value row once per block, not once per step. A query's scores and sums do
    // not depend on the others', so the results are the step-by-step ones, bit for bit.
    const size_t steps_per_block = std::max<size_t>(1, kBlockQueries / group);
    struct Block {
      size_t m0, m1;  // measured steps [m0, m1)
      int64_t lo;     // their first key
    };
    std::vector<Block> blocks;
    for (size_t m0 = 0; m0 < measured.size();) {
      const int64_t lo = window_start(window, measured[m0]);
      const int64_t gap = std::max<int64_t>(16, (measured[m0] - lo + 1) / 8);  // wasted scores
      size_t m1 = m0 + 1;
      while (m1 < measured.size() && m1 - m0 < steps_per_block &&
             window_start(window, measured[m1]) == lo && measured[m1] - measured[m0] <= gap) {
        ++m1;
      }
      blocks.push_back({m0, m1, lo});
      m0 = m1;
    }
    // Kv head by kv head, so that one head's keys (tiled) and values stay in cache while every
    // block passes over them.
    std::vector<float> qbuf, scores, outbuf;
    std::vector<size_t> lengths;
    KeyTiles keys(d);
    for (int h = 0; h < Hkv; ++h) {
      keys.truncate(0);
      keys.append(layer.key(h, 0), last);
      for (const Block& block : blocks) {
        const size_t m0 = block.m0, m1 = block.m1;
        const int64_t lo = block.lo;
        const size_t n = static_cast<size_t>(measured[m1 - 1] - lo + 1);  // the block's key span
        const int rows = static_cast<int>(m1 - m0) * group;
        qbuf.resize(static_cast<size_t>(rows) * d);
        scores.resize(static_cast<size_t>(rows) * n);
        outbuf.resize(static_cast<size_t>(rows) * d);
        lengths.resize(rows);
        for (size_t m = m0; m < m1; ++m) {
          gather_queries(layer, h, group, measured[m], qbuf.data() + (m - m0) * group * d);
        }
        score_tiles(qbuf.data(), rows, keys, static_cast<size_t>(lo), n,
                    static_cast<float>(meta.attn_scale), scores.data());
        for (size_t m = m0; m < m1; ++m) {
          const size_t n_m = static_cast<size_t>(measured[m] - lo + 1);  // this step's window
          for (int j = 0; j < group; ++j) {
            const size_t r = (m - m0) * group + j;
            float* row = scores.data() + r * n;
            if (!ex.scores.empty()) {
              std::copy_n(row, n_m, ex.scores.data() + offset[m] + (h * group + j) * n_m);
            }
            const size_t top = first_max_index(row, n_m);  // the lowest position on ties
            ex.top1[m * Hq + h * group + j] = static_cast<int32_t>(lo + static_cast<int64_t>(top));
            ex.lse[m * Hq + h * group + j] = softmax_with_max(row, n_m, row[top]);
            lengths[r] = n_m;
          }
        }
        weighted_sum_rows(scores.data(), n, rows, lengths.data(),
                          layer.value(h, static_cast<int>(lo)), d, outbuf.data());
        for (size_t m = m0; m < m1; ++m) {
          std::copy_n(outbuf.data() + (m - m0) * group * d, static_cast<size_t>(group) * d,
                      ex.out.data() + (m * Hq + h * group) * d);
        }
      }
    }
    return ex;
  }

  void prefill_column_sums(const TraceMeta& meta,
                           std::span<const PrefillSumsTask> tasks) const override {
    for (const PrefillSumsTask& task : tasks) {
      KVSIM_CHECK(task.layer != nullptr && task.colsum != nullptr);
      prefill_column_sums_one(meta, task);
    }
  }

  void cache_attention(const TraceMeta& meta,
                       std::span<const CacheAttentionTask> tasks) const override {
    thread_local std::vector<float> qbuf, raw_scores;
    for (const CacheAttentionTask& task : tasks) {
      KVSIM_CHECK(task.layer != nullptr && task.cache != nullptr && task.out != nullptr);
      cache_attention_one(meta, task, qbuf, raw_scores);
    }
  }
};

}  // namespace

const AttentionBackend& cpu_backend() {
  static const CpuBackend backend;
  return backend;
}

}  // namespace kvsim
