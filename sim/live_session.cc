#include "sim/live_session.h"

#include <algorithm>
#include <cstring>

#include "sim/base/errors.h"
#include "sim/calibration.h"
#include "sim/cpu_backend.h"
#include "sim/engine.h"

namespace kvsim {

TraceMeta live_trace_meta(const LiveModelShape& shape) {
  TraceMeta meta;
  meta.model_name = shape.model_name;
  meta.model_source = "live";
  meta.trace_id = "live";
  meta.num_model_layers = shape.num_layers;
  for (int l = 0; l < shape.num_layers; ++l) meta.layer_ids.push_back(l);
  meta.sliding_window = shape.sliding_window;
  meta.num_q_heads = shape.num_q_heads;
  meta.num_kv_heads = shape.num_kv_heads;
  meta.head_dim = shape.head_dim;
  meta.attn_scale = shape.attn_scale;
  meta.dtype = shape.dtype;
  meta.validate("live model '" + shape.model_name + "'");
  return meta;
}

namespace {

// Refuses what the live mode cannot run: a policy that reads the future, or a prepare hook
// without a trace that stores the model's layers.
void check_live_spec(const PolicySpec& spec, const TraceMeta& meta, const TraceReader* trace) {
  for (const StageSpec& stage : spec.stages()) {
    if (stage.info->name == "oracle") {
      throw ConfigError("policy '" + spec.text() +
                        "': oracle scores tokens by the attention of future queries, which a "
                        "live model has not produced yet (it is a replay-only reference)");
    }
    if (!stage.info->prepare) continue;
    if (!trace) {
      throw ConfigError("policy '" + spec.text() + "': stage '" + stage.info->name +
                        "' calibrates on a trace; give the session the trace");
    }
    if (trace->meta().layer_ids != meta.layer_ids) {
      throw ConfigError("policy '" + spec.text() + "': stage '" + stage.info->name +
                        "' calibrates on the trace's layers, but " + trace->path() +
                        " does not store every layer of the model");
    }
  }
}

}  // namespace

LiveSession::LiveSession(const LiveModelShape& shape, const std::string& spec, int sequence,
                         int64_t prompt_len, int64_t max_tokens, uint64_t seed,
                         const TraceReader* calibration)
    : meta_(live_trace_meta(shape)),
      spec_(PolicySpec::parse(spec)),
      prompt_len_(prompt_len),
      max_tokens_(max_tokens) {
  if (prompt_len < 1 || max_tokens < prompt_len || max_tokens > kMaxTraceTokens) {
    throw ConfigError("live session: need 1 <= prompt_len (" + std::to_string(prompt_len) +
                      ") <= max_tokens (" + std::to_string(max_tokens) +
                      ") <= " + std::to_string(kMaxTraceTokens));
  }
  spec_.check_against(meta_);
  check_live_spec(spec_, meta_, calibration);
  std::vector<std::shared_ptr<const PolicyState>> prepared;
  if (calibration) prepared = prepare_policy(spec_, *calibration);
  const int L = meta_.num_layers(), d = meta_.head_dim;
  raw_.resize(L);
  for (int l = 0; l < L; ++l) {
    raw_[l].slot = l;
    raw_[l].num_tokens = static_cast<int>(max_tokens);
    raw_[l].head_dim = d;
    raw_[l].q.assign(static_cast<size_t>(meta_.num_q_heads) * max_tokens * d, 0.f);
    raw_[l].k.assign(static_cast<size_t>(meta_.num_kv_heads) * max_tokens * d, 0.f);
    raw_[l].v.assign(static_cast<size_t>(meta_.num_kv_heads) * max_tokens * d, 0.f);
  }
  filled_.assign(L, 0);
  groups_ = spec_.layer_slot_groups(meta_);
  group_of_.assign(L, -1);
  local_of_.assign(L, -1);
  for (size_t g = 0; g < groups_.size(); ++g) {
    std::vector<const LayerData*> layers;
    for (size_t i = 0; i < groups_[g].size(); ++i) {
      group_of_[groups_[g][i]] = static_cast<int>(g);
      local_of_[groups_[g][i]] = static_cast<int>(i);
      layers.push_back(&raw_[groups_[g][i]]);
    }
    // No prefill cache: one policy per session, and nothing to share.
    drivers_.push_back(std::make_unique<ShardDriver>(meta_, sequence, prompt_len, max_tokens,
                                                     groups_[g], layers, spec_, prepared, seed,
                                                     nullptr, cpu_backend()));
  }
  inserted_.assign(groups_.size(), 0);
}

LiveSession::~LiveSession() = default;

void LiveSession::append(int layer, const float* q, const float* k, const float* v, int64_t n) {
  if (layer < 0 || layer >= meta_.num_layers()) {
    throw ConfigError("live session: layer " + std::to_string(layer) + " out of range (model has " +
                      std::to_string(meta_.num_layers()) + ")");
  }
  const int g = group_of_[layer];
  const int64_t have = filled_[layer];
  const int64_t expect = have == 0 ? prompt_len_ : 1;
  if (n != expect) {
    throw ConfigError("live session: layer " + std::to_string(layer) + " got " + std::to_string(n) +
                      " tokens, expected " + std::to_string(expect) +
                      (have == 0 ? " (the prompt)" : " (one per decode step)"));
  }
  if (have + n > max_tokens_) {
    throw ConfigError("live session: more than max_tokens = " + std::to_string(max_tokens_) +
                      " tokens");
  }
  if (have != inserted_[g]) {
    throw ConfigError("live session: layer " + std::to_string(layer) +
                      " produced a token before the other layers of its group produced the "
                      "previous one");
  }
  const int d = meta_.head_dim;
  LayerData& raw = raw_[layer];
  auto copy_rows = [&](const float* src, std::vector<float>& dst, int heads) {
    for (int h = 0; h < heads; ++h) {
      std::memcpy(dst.data() + (static_cast<size_t>(h) * max_tokens_ + have) * d,
                  src + static_cast<size_t>(h) * n * d, sizeof(float) * n * d);
    }
  };
  copy_rows(q, raw.q, meta_.num_q_heads);
  copy_rows(k, raw.k, meta_.num_kv_heads);
  copy_rows(v, raw.v, meta_.num_kv_heads);
  filled_[layer] = have + n;
  const bool complete = std::all_of(groups_[g].begin(), groups_[g].end(),
                                    [&](int l) { return filled_[l] == have + n; });
  if (complete) run_event(g);
}

void LiveSession::run_event(int g) {
  ShardDriver& driver = *drivers_[g];
  if (inserted_[g] == 0) {
    driver.prefill();
    inserted_[g] = prompt_len_;
    return;
  }
  const int64_t t = inserted_[g];
  driver.arrive(t);
  inserted_[g] = t + 1;
  if (!driver.needs_decode_attention()) return;
  // The new queries over the caches, as replay_shard computes them at a decode step.
  const int Hkv = meta_.num_kv_heads;
  std::vector<CacheAttentionTask> tasks;
  attended_.resize(driver.caches().size());
  for (int local = 0; local < driver.num_layers(); ++local) {
    for (int h = 0; h < Hkv; ++h) {
      const size_t c = static_cast<size_t>(local) * Hkv + h;
      tasks.push_back(CacheAttentionTask{&raw_[groups_[g][local]], h, t, &driver.caches()[c],
                                         nullptr, &attended_[c]});
    }
  }
  cpu_backend().cache_attention(meta_, tasks);
  for (int local = 0; local < driver.num_layers(); ++local) {
    for (int h = 0; h < Hkv; ++h) {
      driver.observe(local, h, t, attended_[static_cast<size_t>(local) * Hkv + h].probs);
    }
  }
}

void LiveSession::view(int layer, LiveView& out) const {
  if (layer < 0 || layer >= meta_.num_layers()) {
    throw ConfigError("live session: layer " + std::to_string(layer) + " out of range");
  }
  const int g = group_of_[layer], local = local_of_[layer], Hkv = meta_.num_kv_heads;
  const int d = meta_.head_dim;
  if (inserted_[g] == 0) {
    throw ConfigError("live session: layer " + std::to_string(layer) +
                      " has no cache before its group's prompt arrived");
  }
  const int64_t t = filled_[layer] - 1;    // the newest token
  const bool pending = inserted_[g] == t;  // its event waits for later layers of the group
  const int64_t lo = window_start(meta_.sliding_window[layer], t);
  const ShardDriver& driver = *drivers_[g];
  // Per head: the cache rows to show ([first, size)), plus the pending row.
  std::vector<size_t> first(Hkv, 0);
  out.lengths.assign(Hkv, 0);
  for (int h = 0; h < Hkv; ++h) {
    const HeadCache& c = driver.cache(local, h);
    if (pending) {
      first[h] = static_cast<size_t>(std::lower_bound(c.positions.begin(), c.positions.end(), lo) -
                                     c.positions.begin());
    }
    out.lengths[h] = static_cast<int64_t>(c.size() - first[h]) + (pending ? 1 : 0);
  }
  out.width = *std::max_element(out.lengths.begin(), out.lengths.end());
  out.positions.assign(static_cast<size_t>(Hkv) * out.width, -1);
  out.keys.assign(static_cast<size_t>(Hkv) * out.width * d, 0.f);
  out.values.assign(out.keys.size(), 0.f);
  const LayerData& raw = raw_[layer];
  for (int h = 0; h < Hkv; ++h) {
    const HeadCache& c = driver.cache(local, h);
    const size_t base = static_cast<size_t>(h) * out.width;
    const size_t rows = c.size() - first[h];
    std::copy_n(c.positions.begin() + first[h], rows, out.positions.begin() + base);
    std::copy_n(c.keys.begin() + first[h] * d, rows * d, out.keys.begin() + base * d);
    std::copy_n(c.values.begin() + first[h] * d, rows * d, out.values.begin() + base * d);
    if (pending) {
      out.positions[base + rows] = static_cast<int32_t>(t);
      std::copy_n(raw.key(h, static_cast<int>(t)), d, out.keys.begin() + (base + rows) * d);
      std::copy_n(raw.value(h, static_cast<int>(t)), d, out.values.begin() + (base + rows) * d);
    }
  }
}

LiveFootprint LiveSession::footprint() const {
  LiveFootprint f;
  const int d = meta_.head_dim;
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (inserted_[g] == 0) continue;
    const int64_t t = inserted_[g] - 1;
    for (size_t local = 0; local < groups_[g].size(); ++local) {
      const int window = meta_.sliding_window[groups_[g][local]];
      for (int h = 0; h < meta_.num_kv_heads; ++h) {
        f.bits += drivers_[g]->memory(static_cast<int>(local), h).total();
        f.kept_tokens +=
            static_cast<int64_t>(drivers_[g]->cache(static_cast<int>(local), h).size());
        f.fp16_bits += int64_t{2} * 16 * d * (t - window_start(window, t) + 1);
      }
    }
  }
  return f;
}

const HeadCache& LiveSession::cache(int layer, int kv_head) const {
  if (layer < 0 || layer >= meta_.num_layers() || kv_head < 0 || kv_head >= meta_.num_kv_heads) {
    throw ConfigError("live session: no cache for layer " + std::to_string(layer) + ", kv head " +
                      std::to_string(kv_head));
  }
  return drivers_[group_of_[layer]]->cache(local_of_[layer], kv_head);
}

std::vector<HeadCache> replay_prefill_caches(const TraceReader& trace, const std::string& text,
                                             int sequence, uint64_t seed) {
  const TraceMeta& meta = trace.meta();
  const PolicySpec spec = PolicySpec::parse(text);
  spec.check_against(meta);
  validate_sequences(trace, {sequence});
  const auto prepared = prepare_policy(spec, trace);
  const SequenceInfo& info = trace.sequence(sequence);
  std::vector<HeadCache> out(static_cast<size_t>(meta.num_layers()) * meta.num_kv_heads);
  for (const auto& group : spec.layer_slot_groups(meta)) {
    std::vector<LayerData> layers;
    std::vector<const LayerData*> pointers;
    for (int slot : group) layers.push_back(trace.read_layer(sequence, slot));
    for (const auto& layer : layers) pointers.push_back(&layer);
    ShardDriver driver(meta, sequence, info.prompt_len, info.num_tokens, group, pointers, spec,
                       prepared, seed, nullptr, cpu_backend());
    driver.prefill();
    for (size_t local = 0; local < group.size(); ++local) {
      for (int h = 0; h < meta.num_kv_heads; ++h) {
        out[static_cast<size_t>(group[local]) * meta.num_kv_heads + h] =
            driver.cache(static_cast<int>(local), h);
      }
    }
  }
  return out;
}

}  // namespace kvsim
