#include "sim/shard_driver.h"

#include <algorithm>
#include <iterator>
#include <numeric>

#include "sim/base/errors.h"
#include "sim/base/rng.h"
#include "sim/cpu_backend.h"

namespace kvsim {

namespace {

// Removes `drop` (sorted) from `sorted` in place.
void subtract_sorted(std::vector<int32_t>& sorted, const std::vector<int32_t>& drop) {
  if (drop.empty()) return;
  std::vector<int32_t> out;
  out.reserve(sorted.size());
  std::set_difference(sorted.begin(), sorted.end(), drop.begin(), drop.end(),
                      std::back_inserter(out));
  sorted.swap(out);
}

void sort_unique(std::vector<int32_t>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

ShardContext shard_context(const TraceMeta& meta, int sequence, int64_t prompt_len,
                           int64_t num_tokens, const std::vector<int>& slots,
                           const std::vector<const LayerData*>& layers, uint64_t seed,
                           AttentionRowMemo* memo) {
  ShardContext ctx;
  ctx.meta = &meta;
  ctx.sequence = sequence;
  ctx.slots = slots;
  ctx.layers = layers;
  ctx.prompt_len = prompt_len;
  ctx.num_tokens = num_tokens;
  ctx.seed = derive_seed(seed, static_cast<uint64_t>(sequence), static_cast<uint64_t>(slots[0]));
  ctx.memo = memo;
  return ctx;
}

}  // namespace

ShardDriver::ShardDriver(const TraceMeta& meta, int sequence, int64_t prompt_len,
                         int64_t num_tokens, const std::vector<int>& slots,
                         const std::vector<const LayerData*>& layers, const PolicySpec& policy,
                         const std::vector<std::shared_ptr<const PolicyState>>& prepared,
                         uint64_t seed, PrefillAttentionCache* prefill_cache,
                         const AttentionBackend& backend)
    : meta_(meta),
      prompt_len_(prompt_len),
      slots_(slots),
      layers_(layers),
      prefill_cache_(prefill_cache),
      backend_(backend),
      num_kv_heads_(meta.num_kv_heads),
      pipe_(Pipeline::create(policy,
                             shard_context(meta, sequence, prompt_len, num_tokens, slots, layers,
                                           seed, prefill_cache ? &prefill_cache->rows : nullptr),
                             prepared)) {
  KVSIM_CHECK(slots.size() == layers.size() && !slots.empty());
  decode_attention_ = pipe_.needs_decode_attention();
  caches_.resize(layers.size() * static_cast<size_t>(num_kv_heads_));
  for (auto& c : caches_) c.head_dim = meta.head_dim;
  for (auto& e : pipe_.evicts) observers_.push_back(e.get());
  observers_.push_back(pipe_.store.get());
  evicted_by_.assign(pipe_.evicts.size(), 0);
}

// Prefill column sums for `rows` over the current candidates; looked up in
// the unit's cache while nothing has been evicted yet (the common case).
void ShardDriver::prefill_attention(int local, int h, int window, int64_t rows, bool untouched) {
  auto compute = [&] {
    const PrefillSumsTask task{layers_[local], h, window, prompt_len_, rows, candidates_, &colsum_};
    backend_.prefill_column_sums(meta_, std::span(&task, 1));
  };
  if (!prefill_cache_ || !untouched) {
    compute();
    return;
  }
  auto key = std::make_tuple(slots_[local], h, rows);
  auto it = prefill_cache_->entries.find(key);
  if (it == prefill_cache_->entries.end()) {
    compute();
    prefill_cache_->entries.emplace(key, colsum_);
  } else {
    colsum_ = it->second;
  }
}

// Runs the evict stages in order over `candidates_` at a decode step; returns
// what they dropped.
std::vector<int32_t> ShardDriver::run_evicts(ArrivalView& view) {
  std::vector<int32_t> dropped;
  for (size_t e = 0; e < pipe_.evicts.size(); ++e) {
    evict_.clear();
    view.candidates = candidates_;
    pipe_.evicts[e]->select(view, evict_);
    sort_unique(evict_);
    if (evict_.empty()) continue;
    evicted_by_[e] += static_cast<int64_t>(evict_.size());
    subtract_sorted(candidates_, evict_);
    dropped.insert(dropped.end(), evict_.begin(), evict_.end());
  }
  return dropped;
}

// Each evict stage, in order, runs over every kv head of a layer before the
// next: a stage that asked for prefill attention gets the column sums of its
// own row count over the entries the earlier stages left, for every head, then
// prefill_layer() sees every head, then select() runs head by head. So a stage
// may decide across the heads of a layer (TOVA's layer mean, AdaKV's budgets);
// a per-head stage selects exactly as it would head by head.
void ShardDriver::prefill() {
  const int64_t P = prompt_len_;
  const int Hkv = num_kv_heads_;
  std::vector<std::vector<int32_t>> head_candidates(Hkv);
  std::vector<char> head_untouched(Hkv);
  std::vector<ArrivalView> head_views(Hkv);
  for (int local = 0; local < num_layers(); ++local) {
    const LayerData& raw = *layers_[local];
    const int window = meta_.sliding_window[slots_[local]];
    const int64_t lo = window_start(window, P - 1);
    for (int h = 0; h < Hkv; ++h) {
      head_candidates[h].resize(P - lo);
      std::iota(head_candidates[h].begin(), head_candidates[h].end(), static_cast<int32_t>(lo));
      head_untouched[h] = 1;
      ArrivalView& view = head_views[h];
      view.local_layer = local;
      view.kv_head = h;
      view.step = P - 1;
      view.prefill = true;
      view.raw = &raw;
    }
    for (size_t e = 0; e < pipe_.evicts.size(); ++e) {
      EvictStage* stage = pipe_.evicts[e].get();
      for (int h = 0; h < Hkv; ++h) {
        head_views[h].candidates = head_candidates[h];
        if (stage->prefill_attention_rows() == 0) continue;
        candidates_ = head_candidates[h];
        prefill_attention(local, h, window, stage->prefill_attention_rows(), head_untouched[h]);
        stage->observe_prefill(local, h, head_candidates[h], colsum_);
      }
      stage->prefill_layer(local, head_views);
      for (int h = 0; h < Hkv; ++h) {
        evict_.clear();
        stage->select(head_views[h], evict_);
        sort_unique(evict_);
        if (evict_.empty()) continue;
        evicted_by_[e] += static_cast<int64_t>(evict_.size());
        subtract_sorted(head_candidates[h], evict_);
        head_untouched[h] = 0;
      }
    }
    for (int h = 0; h < Hkv; ++h) {
      candidates_ = head_candidates[h];
      if (pipe_.store->prefill_attention_rows() != 0) {
        prefill_attention(local, h, window, pipe_.store->prefill_attention_rows(),
                          head_untouched[h]);
        pipe_.store->observe_prefill(local, h, candidates_, colsum_);
      }
      pipe_.store->insert(local, h, cache(local, h), candidates_, raw, /*prefill=*/true);
      extend_ledger(local, h);
    }
  }
}

void ShardDriver::arrive(int64_t t) {
  for (int local = 0; local < num_layers(); ++local) {
    const LayerData& raw = *layers_[local];
    const int window = meta_.sliding_window[slots_[local]];
    for (int h = 0; h < num_kv_heads_; ++h) {
      HeadCache& c = cache(local, h);
      removed_.clear();
      if (window > 0 && t - window >= 0 && c.find(static_cast<int32_t>(t - window)) >= 0) {
        removed_.push_back(static_cast<int32_t>(t - window));  // left the model's own window
      }
      bool keep_new = true;
      if (!pipe_.evicts.empty()) {  // the candidate list is only built when someone selects
        candidates_.assign(c.positions.begin(), c.positions.end());
        subtract_sorted(candidates_, removed_);
        candidates_.push_back(static_cast<int32_t>(t));
        ArrivalView view;
        view.local_layer = local;
        view.kv_head = h;
        view.step = t;
        view.raw = &raw;
        for (int32_t pos : run_evicts(view)) {
          if (pos == t)
            keep_new = false;
          else
            removed_.push_back(pos);
        }
        sort_unique(removed_);
      }
      if (!removed_.empty()) {
        if (!tiles_.empty()) drop_tiles_from(local, h, c.find(removed_.front()));
        c.remove(removed_);
        pipe_.store->removed(local, h, c, removed_);
        if (!ledgers_.empty()) ledgers_[local * num_kv_heads_ + h].removed(removed_);
      }
      // Called even when the new entry was evicted (empty span), so that a
      // cross-layer store sees every layer of every event.
      const int32_t pos = static_cast<int32_t>(t);
      pipe_.store->insert(local, h, c, std::span<const int32_t>(&pos, keep_new ? 1 : 0), raw,
                          /*prefill=*/false);
      extend_ledger(local, h);
    }
  }
}

// The rows the store declares final are added to the cache's ledger (when tracked).
// (And their count is noted for the key tiles, when tracked.)
void ShardDriver::extend_ledger(int local, int h) {
  if (ledgers_.empty() && tiles_.empty()) return;
  const HeadCache& c = cache(local, h);
  const size_t final_rows = pipe_.store->final_rows(local, h, c);
  if (!ledgers_.empty()) {
    ledgers_[local * num_kv_heads_ + h].extend(c, final_rows, *layers_[local], h);
  }
  if (!tiles_.empty()) tiles_[local * num_kv_heads_ + h].final_rows = final_rows;
}

// Rows from `row` on move (a row before them leaves): their tiles are made again when asked.
void ShardDriver::drop_tiles_from(int local, int h, int64_t row) {
  FinalTiles& f = tiles_[local * num_kv_heads_ + h];
  const size_t keep =
      std::min<size_t>(f.final_rows, static_cast<size_t>(std::max<int64_t>(row, 0)));
  f.final_rows = keep;
  if (f.tiles && f.tiles->num_keys > keep) {
    f.tiles->truncate(keep / KeyTiles::kTileKeys * KeyTiles::kTileKeys);
  }
}

const KeyTiles* ShardDriver::key_tiles(int local, int h) {
  if (tiles_.empty()) return nullptr;
  FinalTiles& f = tiles_[local * num_kv_heads_ + h];
  const HeadCache& c = cache(local, h);
  if (!f.tiles) f.tiles = std::make_unique<KeyTiles>(c.head_dim);
  const size_t whole = std::min(f.final_rows, c.size()) / KeyTiles::kTileKeys * KeyTiles::kTileKeys;
  if (whole > f.tiles->num_keys) {
    f.tiles->append(c.key_row(f.tiles->num_keys), whole - f.tiles->num_keys);
  }
  return f.tiles.get();
}

void ShardDriver::observe(int local, int h, int64_t t, std::span<const float> probs) {
  if (!decode_attention_) return;
  const HeadCache& c = cache(local, h);
  for (Stage* stage : observers_) {
    if (stage->needs_decode_attention()) stage->observe(local, h, t, c.positions, probs);
  }
}

void ShardDriver::report(std::map<std::string, double>& counters,
                         std::vector<int64_t>& stage_acted) const {
  for (auto& e : pipe_.evicts) e->report(counters);
  pipe_.store->report(counters);
  // Whether each of the spec's stages acted in this shard (1 or 0; summed over a run's shards).
  for (const Stage* stage : pipe_.spec_stages) {
    const auto it = std::find_if(pipe_.evicts.begin(), pipe_.evicts.end(),
                                 [&](const auto& e) { return e.get() == stage; });
    const bool acted = it != pipe_.evicts.end() ? evicted_by_[it - pipe_.evicts.begin()] > 0
                                                : static_cast<const StoreStage*>(stage)->acted();
    stage_acted.push_back(acted ? 1 : 0);
  }
}

}  // namespace kvsim
