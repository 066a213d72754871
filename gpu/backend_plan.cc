// Host-side bookkeeping of the GPU attention backend (see backend_plan.h).
#include "gpu/backend_plan.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "sim/base/errors.h"

namespace kvsim::gpu {
namespace {

bool same_row(const float* a, const float* b, int d) {
  return std::memcmp(a, b, sizeof(float) * static_cast<size_t>(d)) == 0;
}

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

CacheDeltaPlan plan_cache_delta(const HeadCache& before, const HeadCache& now) {
  const int d = now.head_dim;
  const size_t n = now.size();
  CacheDeltaPlan plan;
  plan.old_rows = static_cast<int64_t>(before.size());
  plan.source.resize(n);
  const bool comparable = before.head_dim == d;
  // The common cases first: rows that stay in place (appends, a rewritten tail).
  size_t i = 0;
  for (; comparable && i < n && i < before.size(); ++i) {
    if (before.positions[i] != now.positions[i] ||
        !same_row(before.key_row(i), now.key_row(i), d) ||
        !same_row(before.value_row(i), now.value_row(i), d)) {
      break;
    }
    plan.source[i] = static_cast<int32_t>(i);
  }
  plan.kept_prefix = static_cast<int64_t>(i);
  // The rest by position (removals shift rows; merges rewrite them).
  std::unordered_map<int32_t, int32_t> old_row;
  if (comparable && i < n) {
    for (size_t r = i; r < before.size(); ++r) {
      old_row.emplace(before.positions[r], static_cast<int32_t>(r));
    }
  }
  for (; i < n; ++i) {
    const auto it = old_row.find(now.positions[i]);
    if (it != old_row.end() && same_row(before.key_row(it->second), now.key_row(i), d) &&
        same_row(before.value_row(it->second), now.value_row(i), d)) {
      plan.source[i] = it->second;
    } else {
      plan.source[i] = -static_cast<int32_t>(plan.staged.size()) - 1;
      plan.staged.push_back(static_cast<int32_t>(i));
    }
  }
  return plan;
}

void gather_staged_rows(const CacheDeltaPlan& plan, const HeadCache& now, std::vector<float>& keys,
                        std::vector<float>& values) {
  const size_t d = static_cast<size_t>(now.head_dim);
  keys.resize(plan.staged.size() * d);
  values.resize(plan.staged.size() * d);
  for (size_t s = 0; s < plan.staged.size(); ++s) {
    std::memcpy(keys.data() + s * d, now.key_row(plan.staged[s]), sizeof(float) * d);
    std::memcpy(values.data() + s * d, now.value_row(plan.staged[s]), sizeof(float) * d);
  }
}

void apply_cache_delta(const CacheDeltaPlan& plan, std::span<const int32_t> positions,
                       std::span<const float> staged_keys, std::span<const float> staged_values,
                       HeadCache& image) {
  const size_t d = static_cast<size_t>(image.head_dim), n = plan.source.size();
  KVSIM_CHECK(positions.size() == n && staged_keys.size() == plan.staged.size() * d &&
              staged_values.size() == staged_keys.size());
  KVSIM_CHECK(static_cast<int64_t>(image.size()) == plan.old_rows);
  HeadCache next;
  next.head_dim = image.head_dim;
  next.positions.assign(positions.begin(), positions.end());
  next.keys.resize(n * d);
  next.values.resize(n * d);
  for (size_t i = 0; i < n; ++i) {
    const int32_t src = plan.source[i];
    const float* k = src >= 0 ? image.key_row(src) : staged_keys.data() + (-src - 1) * d;
    const float* v = src >= 0 ? image.value_row(src) : staged_values.data() + (-src - 1) * d;
    std::memcpy(next.key_row(i), k, sizeof(float) * d);
    std::memcpy(next.value_row(i), v, sizeof(float) * d);
  }
  image = std::move(next);
}

RaggedLayout build_ragged_layout(int group, int head_dim,
                                 std::span<const CacheAttentionTask> tasks) {
  RaggedLayout layout;
  layout.group = group;
  layout.head_dim = head_dim;
  layout.row_indptr.reserve(tasks.size() + 1);
  layout.row_indptr.push_back(0);
  layout.measured_slot.reserve(tasks.size());
  for (const CacheAttentionTask& task : tasks) {
    KVSIM_CHECK(task.layer != nullptr && task.cache != nullptr && task.out != nullptr);
    layout.row_indptr.push_back(layout.row_indptr.back() +
                                static_cast<int64_t>(task.cache->size()));
    layout.measured_slot.push_back(
        task.exact_lse != nullptr ? static_cast<int32_t>(layout.num_measured++) : -1);
  }
  return layout;
}

WorkspaceSizes workspace_sizes(const RaggedLayout& layout, size_t descriptor_bytes) {
  WorkspaceSizes s;
  const int64_t g = layout.group, tasks = static_cast<int64_t>(layout.num_tasks());
  const int64_t m = layout.num_measured;
  s.descriptors = static_cast<int64_t>(descriptor_bytes) * tasks;
  s.scores = s.probs = g * layout.total_rows();
  s.lse_hat = tasks * g;
  s.exact_lse = s.kept_mass = s.kept_cross = s.top1 = m * g;
  s.out_hat = m * g * layout.head_dim;
  return s;
}

WorkspaceSizes::Offsets WorkspaceSizes::offsets() const {
  Offsets o{};
  size_t at = 0;
  auto place = [&](size_t& offset, size_t bytes) {
    offset = at;
    at += align_up(bytes);
  };
  // The inputs first (descriptors, exact log-sum-exps): one upload of [0, scores).
  place(o.descriptors, static_cast<size_t>(descriptors));
  place(o.exact_lse, sizeof(double) * exact_lse);
  place(o.scores, sizeof(float) * scores);
  place(o.probs, sizeof(float) * probs);
  place(o.lse_hat, sizeof(double) * lse_hat);
  place(o.out_hat, sizeof(float) * out_hat);
  place(o.kept_mass, sizeof(float) * kept_mass);
  place(o.kept_cross, sizeof(float) * kept_cross);
  place(o.top1, sizeof(int32_t) * top1);
  o.end = at;
  return o;
}

void RaggedOutputs::resize_for(const RaggedLayout& layout) {
  const WorkspaceSizes s = workspace_sizes(layout, 0);
  scores.resize(s.scores);
  probs.resize(s.probs);
  lse_hat.resize(s.lse_hat);
  out_hat.resize(s.out_hat);
  kept_mass.resize(s.kept_mass);
  kept_cross.resize(s.kept_cross);
  top1.resize(s.top1);
}

void scatter_outputs(const RaggedLayout& layout, const RaggedOutputs& outputs,
                     std::span<const CacheAttentionTask> tasks) {
  const size_t g = static_cast<size_t>(layout.group), d = static_cast<size_t>(layout.head_dim);
  KVSIM_CHECK(tasks.size() == layout.num_tasks());
  for (size_t t = 0; t < tasks.size(); ++t) {
    CacheAttention& out = *tasks[t].out;
    const size_t begin = static_cast<size_t>(layout.row_indptr[t]) * g;
    const size_t count = static_cast<size_t>(layout.row_indptr[t + 1]) * g - begin;
    out.scores.assign(outputs.scores.begin() + begin, outputs.scores.begin() + begin + count);
    out.probs.assign(outputs.probs.begin() + begin, outputs.probs.begin() + begin + count);
    out.lse_hat.assign(outputs.lse_hat.begin() + t * g, outputs.lse_hat.begin() + (t + 1) * g);
    const int32_t m = layout.measured_slot[t];
    if (m < 0) continue;
    const size_t at = static_cast<size_t>(m) * g;
    out.out_hat.assign(outputs.out_hat.begin() + at * d, outputs.out_hat.begin() + (at + g) * d);
    out.kept_mass.assign(outputs.kept_mass.begin() + at, outputs.kept_mass.begin() + at + g);
    out.kept_cross.assign(outputs.kept_cross.begin() + at, outputs.kept_cross.begin() + at + g);
    out.top1.assign(outputs.top1.begin() + at, outputs.top1.begin() + at + g);
  }
}

PrefillLayout build_prefill_layout(int group, std::span<const PrefillSumsTask> tasks) {
  PrefillLayout layout;
  layout.candidate_indptr.push_back(0);
  layout.colsum_indptr.push_back(0);
  layout.row_indptr.push_back(0);
  for (const PrefillSumsTask& task : tasks) {
    KVSIM_CHECK(task.layer != nullptr && task.colsum != nullptr);
    const int64_t nc = static_cast<int64_t>(task.candidates.size());
    const int64_t first = task.rows < 0 ? 0 : std::max<int64_t>(0, task.prompt_len - task.rows);
    layout.first_row.push_back(first);
    layout.candidate_indptr.push_back(layout.candidate_indptr.back() + nc);
    layout.colsum_indptr.push_back(layout.colsum_indptr.back() + nc * group);
    layout.row_indptr.push_back(layout.row_indptr.back() + (task.prompt_len - first) * group);
  }
  return layout;
}

}  // namespace kvsim::gpu
