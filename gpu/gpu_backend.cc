// The GPU attention backend's host side (gpu_backend.h): copies of layers and caches in the
// executor's memory (least recently used dropped beyond a budget), deltas, ragged layouts and
// workspaces. Thread-safe: the engine calls it from several threads at once.
#include "gpu/gpu_backend.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "gpu/attention_executor.h"
#include "sim/base/errors.h"

namespace kvsim::gpu {

struct BackendWorkspace::State {
  RaggedOutputs outputs;
  std::unique_ptr<ExecutorScratch> scratch;
  std::vector<const LayerImage*> layers;
  std::vector<const CacheImage*> caches;
  std::vector<std::shared_ptr<const void>> pinned;  // keeps this call's copies alive
  std::vector<float> staged_keys, staged_values, colsums;
};

BackendWorkspace::BackendWorkspace() : state_(std::make_unique<State>()) {}
BackendWorkspace::~BackendWorkspace() = default;

namespace {

struct LayerEntry {
  std::unique_ptr<LayerImage> image;
  // What the copy was made from: a LayerData at the same address with other buffers or sizes
  // is another layer (the engine uploads each unit's layers at their exact_attention call).
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  size_t q_size = 0, k_size = 0;
  uint64_t last_use = 0;
};

struct CacheEntry {
  std::mutex mutex;
  HeadCache shadow;  // the rows the image holds
  std::unique_ptr<CacheImage> image;
  uint64_t last_use = 0;
  int64_t accounted = 0;  // bytes counted in the backend's total (under the backend's mutex)
};

bool made_from(const LayerEntry& e, const LayerData& layer) {
  return e.q == layer.q.data() && e.k == layer.k.data() && e.v == layer.v.data() &&
         e.q_size == layer.q.size() && e.k_size == layer.k.size();
}

class RaggedBackend final : public GpuBackend {
 public:
  RaggedBackend(std::unique_ptr<AttentionExecutor> executor, size_t budget)
      : executor_(std::move(executor)), budget_(budget) {}

  std::string name() const override { return executor_->name(); }

  ExactLayer exact_attention(const TraceMeta& meta, const LayerData& layer,
                             std::span<const int64_t> measured) const override {
    const auto entry = layer_image(layer, /*fresh=*/true);
    ExactLayer ex = executor_->exact_attention(meta, *entry->image, measured);
    ex.slot = layer.slot;
    return ex;
  }

  void prefill_column_sums(const TraceMeta& meta,
                           std::span<const PrefillSumsTask> tasks) const override {
    if (tasks.empty()) return;
    const auto lease = pool_.acquire();
    BackendWorkspace::State& ws = lease.workspace->state();
    ws.layers.clear();
    ws.pinned.clear();
    for (const PrefillSumsTask& task : tasks) {
      KVSIM_CHECK(task.layer != nullptr && task.colsum != nullptr);
      auto entry = layer_image(*task.layer, /*fresh=*/false);
      ws.layers.push_back(entry->image.get());
      ws.pinned.push_back(std::move(entry));
    }
    const PrefillLayout layout = build_prefill_layout(meta.group_size(), tasks);
    executor_->prefill_column_sums(PrefillCall{&meta, tasks, ws.layers, &layout}, ws.scratch,
                                   ws.colsums);
    for (size_t t = 0; t < tasks.size(); ++t) {
      tasks[t].colsum->assign(ws.colsums.begin() + layout.colsum_indptr[t],
                              ws.colsums.begin() + layout.colsum_indptr[t + 1]);
    }
    ws.pinned.clear();
  }

  void cache_attention(const TraceMeta& meta,
                       std::span<const CacheAttentionTask> tasks) const override {
    const auto lease = pool_.acquire();
    cache_attention(meta, tasks, *lease.workspace);
  }

  void cache_attention(const TraceMeta& meta, std::span<const CacheAttentionTask> tasks,
                       BackendWorkspace& workspace) const override {
    if (tasks.empty()) return;
    BackendWorkspace::State& ws = workspace.state();
    ws.layers.clear();
    ws.caches.clear();
    ws.pinned.clear();
    const RaggedLayout layout = build_ragged_layout(meta.group_size(), meta.head_dim, tasks);
    int64_t rows_uploaded = 0;
    std::vector<std::shared_ptr<CacheEntry>> entries;
    entries.reserve(tasks.size());
    for (const CacheAttentionTask& task : tasks) {
      auto layer = layer_image(*task.layer, /*fresh=*/false);
      auto cache = cache_image(*task.cache);
      {
        std::lock_guard lock(cache->mutex);
        rows_uploaded += update_copy(*cache, *task.cache, ws);
      }
      ws.layers.push_back(layer->image.get());
      ws.caches.push_back(cache->image.get());
      ws.pinned.push_back(std::move(layer));
      entries.push_back(std::move(cache));
    }
    ws.outputs.resize_for(layout);
    executor_->cache_attention(RaggedCall{&meta, tasks, ws.layers, ws.caches, &layout}, ws.scratch,
                               ws.outputs);
    scatter_outputs(layout, ws.outputs, tasks);
    ws.pinned.clear();
    std::lock_guard lock(mutex_);
    stats_.cache_rows_attended += layout.total_rows();
    stats_.cache_rows_uploaded += rows_uploaded;
    for (size_t t = 0; t < tasks.size(); ++t) {  // copies still in the maps: their new size
      CacheEntry& e = *entries[t];
      const auto it = caches_.find(tasks[t].cache);
      if (it == caches_.end() || it->second.get() != &e) continue;
      const int64_t bytes = static_cast<int64_t>(e.image->bytes());
      total_bytes_ += bytes - e.accounted;
      e.accounted = bytes;
    }
    evict_beyond_budget();
  }

  BackendStats stats() const override {
    std::lock_guard lock(mutex_);
    return stats_;
  }

 private:
  // A pool of workspaces for callers that bring none (one in use per concurrent call).
  class Pool {
   public:
    struct Lease {
      Pool* pool;
      std::unique_ptr<BackendWorkspace> workspace;
      Lease(Pool* p, std::unique_ptr<BackendWorkspace> w) : pool(p), workspace(std::move(w)) {}
      Lease(const Lease&) = delete;
      Lease& operator=(const Lease&) = delete;
      ~Lease() { pool->release(std::move(workspace)); }
    };
    Lease acquire() {
      std::lock_guard lock(mutex_);
      if (free_.empty()) return Lease(this, std::make_unique<BackendWorkspace>());
      auto w = std::move(free_.back());
      free_.pop_back();
      return Lease(this, std::move(w));
    }
    void release(std::unique_ptr<BackendWorkspace> w) {
      std::lock_guard lock(mutex_);
      free_.push_back(std::move(w));
    }

   private:
    std::mutex mutex_;
    std::vector<std::unique_ptr<BackendWorkspace>> free_;
  };

  // The copy of `layer`, uploaded when there is none, when the entry was made from another
  // layer at the same address, or when `fresh` (a new unit's first call).
  std::shared_ptr<LayerEntry> layer_image(const LayerData& layer, bool fresh) const {
    {
      std::lock_guard lock(mutex_);
      const auto it = layers_.find(&layer);
      if (!fresh && it != layers_.end() && made_from(*it->second, layer)) {
        it->second->last_use = ++clock_;
        return it->second;
      }
    }
    auto entry = std::make_shared<LayerEntry>();
    entry->image = executor_->upload_layer(layer);  // outside the lock: it copies a whole layer
    entry->q = layer.q.data();
    entry->k = layer.k.data();
    entry->v = layer.v.data();
    entry->q_size = layer.q.size();
    entry->k_size = layer.k.size();
    std::lock_guard lock(mutex_);
    entry->last_use = ++clock_;
    ++stats_.layer_uploads;
    auto& slot = layers_[&layer];
    if (slot) total_bytes_ -= static_cast<int64_t>(slot->image->bytes());
    slot = entry;
    total_bytes_ += static_cast<int64_t>(entry->image->bytes());
    evict_beyond_budget();
    return entry;
  }

  std::shared_ptr<CacheEntry> cache_image(const HeadCache& cache) const {
    std::lock_guard lock(mutex_);
    auto& slot = caches_[&cache];
    if (!slot || slot->shadow.head_dim != cache.head_dim) {
      if (slot) total_bytes_ -= slot->accounted;
      slot = std::make_shared<CacheEntry>();
      slot->image = executor_->new_cache_image(cache.head_dim);
      slot->shadow.head_dim = cache.head_dim;
      ++stats_.cache_images;
    }
    slot->last_use = ++clock_;
    return slot;
  }

  // Brings the copy up to `now`; returns the rows uploaded. A HeadCache at an address whose
  // copy was made from another cache is still right: the delta compares contents.
  int64_t update_copy(CacheEntry& entry, const HeadCache& now, BackendWorkspace::State& ws) const {
    const CacheDeltaPlan plan = plan_cache_delta(entry.shadow, now);
    if (plan.unchanged()) return 0;
    gather_staged_rows(plan, now, ws.staged_keys, ws.staged_values);
    executor_->apply_delta(*entry.image, plan, now.positions, ws.staged_keys, ws.staged_values);
    entry.shadow.positions = now.positions;  // assignments keep the shadow's capacity
    entry.shadow.keys = now.keys;
    entry.shadow.values = now.values;
    return static_cast<int64_t>(plan.staged.size());
  }

  // Drops least recently used copies while the copies exceed the budget (mutex_ held). A copy
  // in use by a call stays alive until the call ends (shared ownership).
  // A cache copy's bytes are counted at the end of each call that used it (`accounted`).
  void evict_beyond_budget() const {
    while (total_bytes_ > static_cast<int64_t>(budget_) && layers_.size() + caches_.size() > 1) {
      uint64_t oldest = UINT64_MAX;
      bool is_layer = false;
      const void* victim = nullptr;
      for (const auto& [key, e] : layers_) {
        if (e->last_use < oldest) oldest = e->last_use, victim = key, is_layer = true;
      }
      for (const auto& [key, e] : caches_) {
        if (e->last_use < oldest) oldest = e->last_use, victim = key, is_layer = false;
      }
      if (oldest == clock_) break;  // never the copy just made
      if (is_layer) {
        const auto it = layers_.find(static_cast<const LayerData*>(victim));
        total_bytes_ -= static_cast<int64_t>(it->second->image->bytes());
        layers_.erase(it);
      } else {
        const auto it = caches_.find(static_cast<const HeadCache*>(victim));
        total_bytes_ -= it->second->accounted;
        caches_.erase(it);
      }
      ++stats_.evictions;
    }
  }

  std::unique_ptr<AttentionExecutor> executor_;
  size_t budget_;
  mutable std::mutex mutex_;  // the maps, the clock, the stats
  mutable std::unordered_map<const LayerData*, std::shared_ptr<LayerEntry>> layers_;
  mutable std::unordered_map<const HeadCache*, std::shared_ptr<CacheEntry>> caches_;
  mutable uint64_t clock_ = 0;
  mutable int64_t total_bytes_ = 0;
  mutable BackendStats stats_;
  mutable Pool pool_;
};

}  // namespace

std::unique_ptr<GpuBackend> make_host_reference_backend(const AttentionBackend& reference,
                                                        size_t memory_budget) {
  return std::make_unique<RaggedBackend>(make_host_executor(reference), memory_budget);
}

std::unique_ptr<GpuBackend> make_cuda_backend(int device, size_t memory_budget) {
  auto executor = make_cuda_executor(device);
  if (memory_budget == 0) memory_budget = cuda_default_budget(device);
  return std::make_unique<RaggedBackend>(std::move(executor), memory_budget);
}

}  // namespace kvsim::gpu
