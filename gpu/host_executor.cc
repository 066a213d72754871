// The host executor (attention_executor.h): the images are host copies, updated only through the
// deltas the backend plans, and the arithmetic is a reference backend's, task by task. Its
// results equal the reference's bit for bit exactly when the bookkeeping is right.
#include <algorithm>

#include "gpu/attention_executor.h"
#include "sim/base/errors.h"

namespace kvsim::gpu {
namespace {

struct HostLayer final : LayerImage {
  LayerData data;
  size_t bytes() const override {
    return sizeof(float) * (data.q.size() + data.k.size() + data.v.size());
  }
};

struct HostCache final : CacheImage {
  HeadCache rows;
  size_t bytes() const override {
    return sizeof(float) * (rows.keys.size() + rows.values.size()) +
           sizeof(int32_t) * rows.positions.size();
  }
};

struct HostScratch final : ExecutorScratch {
  CacheAttention one;
  std::vector<float> colsum;
};

HostScratch& host_scratch(std::unique_ptr<ExecutorScratch>& scratch) {
  if (!scratch) scratch = std::make_unique<HostScratch>();
  return static_cast<HostScratch&>(*scratch);
}

class HostExecutor final : public AttentionExecutor {
 public:
  explicit HostExecutor(const AttentionBackend& reference) : reference_(reference) {}
  std::string name() const override { return "host(" + reference_.name() + ")"; }

  std::unique_ptr<LayerImage> upload_layer(const LayerData& layer) override {
    auto image = std::make_unique<HostLayer>();
    image->data = layer;
    return image;
  }

  std::unique_ptr<CacheImage> new_cache_image(int head_dim) override {
    auto image = std::make_unique<HostCache>();
    image->rows.head_dim = head_dim;
    return image;
  }

  void apply_delta(CacheImage& image, const CacheDeltaPlan& plan,
                   std::span<const int32_t> positions, std::span<const float> staged_keys,
                   std::span<const float> staged_values) override {
    apply_cache_delta(plan, positions, staged_keys, staged_values,
                      static_cast<HostCache&>(image).rows);
  }

  ExactLayer exact_attention(const TraceMeta& meta, const LayerImage& layer,
                             std::span<const int64_t> measured) override {
    return reference_.exact_attention(meta, static_cast<const HostLayer&>(layer).data, measured);
  }

  void prefill_column_sums(const PrefillCall& call, std::unique_ptr<ExecutorScratch>& scratch,
                           std::vector<float>& colsums) override {
    HostScratch& s = host_scratch(scratch);
    colsums.assign(static_cast<size_t>(call.layout->colsum_indptr.back()), 0.f);
    for (size_t t = 0; t < call.tasks.size(); ++t) {
      PrefillSumsTask task = call.tasks[t];
      task.layer = &static_cast<const HostLayer*>(call.layers[t])->data;
      task.colsum = &s.colsum;
      reference_.prefill_column_sums(*call.meta, std::span(&task, 1));
      KVSIM_CHECK(static_cast<int64_t>(s.colsum.size()) ==
                  call.layout->colsum_indptr[t + 1] - call.layout->colsum_indptr[t]);
      std::copy(s.colsum.begin(), s.colsum.end(), colsums.begin() + call.layout->colsum_indptr[t]);
    }
  }

  void cache_attention(const RaggedCall& call, std::unique_ptr<ExecutorScratch>& scratch,
                       RaggedOutputs& outputs) override {
    HostScratch& s = host_scratch(scratch);
    const RaggedLayout& layout = *call.layout;
    const size_t g = static_cast<size_t>(layout.group), d = static_cast<size_t>(layout.head_dim);
    for (size_t t = 0; t < call.tasks.size(); ++t) {
      CacheAttentionTask task = call.tasks[t];
      task.layer = &static_cast<const HostLayer*>(call.layers[t])->data;
      task.cache = &static_cast<const HostCache*>(call.caches[t])->rows;
      task.out = &s.one;
      reference_.cache_attention(*call.meta, std::span(&task, 1));
      const size_t begin = static_cast<size_t>(layout.row_indptr[t]) * g;
      KVSIM_CHECK(begin + s.one.scores.size() <= outputs.scores.size());
      std::copy(s.one.scores.begin(), s.one.scores.end(), outputs.scores.begin() + begin);
      std::copy(s.one.probs.begin(), s.one.probs.end(), outputs.probs.begin() + begin);
      std::copy(s.one.lse_hat.begin(), s.one.lse_hat.end(), outputs.lse_hat.begin() + t * g);
      const int32_t m = layout.measured_slot[t];
      if (m < 0) continue;
      const size_t at = static_cast<size_t>(m) * g;
      std::copy(s.one.out_hat.begin(), s.one.out_hat.end(), outputs.out_hat.begin() + at * d);
      std::copy(s.one.kept_mass.begin(), s.one.kept_mass.end(), outputs.kept_mass.begin() + at);
      std::copy(s.one.kept_cross.begin(), s.one.kept_cross.end(), outputs.kept_cross.begin() + at);
      std::copy(s.one.top1.begin(), s.one.top1.end(), outputs.top1.begin() + at);
    }
  }

 private:
  const AttentionBackend& reference_;
};

}  // namespace

std::unique_ptr<AttentionExecutor> make_host_executor(const AttentionBackend& reference) {
  return std::make_unique<HostExecutor>(reference);
}

}  // namespace kvsim::gpu
