#include "sim/engine.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <numeric>

#include "sim/base/attention.h"
#include "sim/base/errors.h"
#include "sim/base/rng.h"
#include "sim/base/union_find.h"
#include "sim/calibration.h"
#include "sim/cpu_backend.h"
#include "sim/kv_row_terms.h"
#include "sim/shard_driver.h"

namespace kvsim {

// ---------------------------------------------------------------------------
MeasureRule MeasureRule::parse(const std::string& text) {
  MeasureRule rule;
  auto number = [&](const std::string& s) {
    try {
      size_t used = 0;
      const long long v = std::stoll(s, &used);
      if (used != s.size() || v < 1) throw std::invalid_argument("");
      return static_cast<int64_t>(v);
    } catch (const std::exception&) {
      throw ConfigError("measured steps '" + text + "': '" + s + "' is not a positive integer");
    }
  };
  if (text == "auto") return rule;
  if (text == "all") {
    rule.kind = Kind::kAll;
  } else if (text.rfind("stride=", 0) == 0) {
    rule.kind = Kind::kStride;
    rule.n = number(text.substr(7));
  } else if (text.rfind("last=", 0) == 0) {
    rule.kind = Kind::kLast;
    rule.n = number(text.substr(5));
  } else {
    throw ConfigError("unknown measured-steps rule '" + text +
                      "' (valid: auto, all, stride=N, last=N)");
  }
  return rule;
}

std::string MeasureRule::describe() const {
  switch (kind) {
    case Kind::kAuto:
      return "auto";
    case Kind::kAll:
      return "all";
    case Kind::kStride:
      return "stride=" + std::to_string(n);
    case Kind::kLast:
      return "last=" + std::to_string(n);
  }
  return "?";
}

std::vector<int64_t> MeasureRule::steps(int64_t prompt_len, int64_t num_tokens) const {
  std::vector<int64_t> out;
  const int64_t decode = num_tokens - prompt_len;
  if (decode <= 0) return out;
  int64_t stride = 1, first = prompt_len;
  switch (kind) {
    case Kind::kAll:
      break;
    case Kind::kAuto:
      stride = std::max<int64_t>(1, (decode + 255) / 256);
      break;
    case Kind::kStride:
      stride = n;
      break;
    case Kind::kLast:
      first = std::max(prompt_len, num_tokens - n);
      break;
  }
  for (int64_t t = first; t < num_tokens; t += stride) out.push_back(t);
  if (out.back() != num_tokens - 1) out.push_back(num_tokens - 1);
  return out;
}

// ---------------------------------------------------------------------------
namespace {

// Points a cache's task at the exact scores of its kv head's group at measured step m, when the
// unit kept them (shared scoring: an eviction-only cache's scores, any cache's exact ones).
void share_exact_scores(const ExactLayer& ex, size_t m, int kv_head, int group,
                        CacheAttentionTask& task) {
  if (ex.scores.empty()) return;
  task.exact_first = ex.score_first[m];
  task.exact_count = static_cast<size_t>(task.step - task.exact_first + 1);
  task.exact_scores = ex.scores.data() + ex.score_offset[m] +
                      static_cast<size_t>(kv_head) * group * task.exact_count;
}

}  // namespace

RunResult replay_shard(const TraceMeta& meta, int sequence, int64_t prompt_len,
                       const std::vector<int>& slots, const std::vector<const LayerData*>& layers,
                       const std::vector<const ExactLayer*>& exact, const PolicySpec& policy,
                       const std::vector<std::shared_ptr<const PolicyState>>& prepared,
                       const std::vector<int64_t>& measured, uint64_t seed,
                       PrefillAttentionCache* prefill_cache, const AttentionBackend* backend) {
  KVSIM_CHECK(slots.size() == layers.size() && slots.size() == exact.size());
  const AttentionBackend& attention = backend ? *backend : cpu_backend();
  const int L = static_cast<int>(slots.size()), Hkv = meta.num_kv_heads;
  const int group = meta.group_size(), d = meta.head_dim, Hq = meta.num_q_heads;
  const int64_t T = layers[0]->num_tokens, P = prompt_len;

  ShardDriver driver(meta, sequence, P, T, slots, layers, policy, prepared, seed, prefill_cache,
                     attention);
  const bool decode_attention = driver.needs_decode_attention();
  RunResult result;
  std::vector<HeadCache>& caches = driver.caches();

  driver.track_row_terms();  // K/V error terms of final rows, kept (sim/kv_row_terms.h)
  driver.track_key_tiles();  // and their keys as tiles, for caches scored with their own keys

  // --- prefill: the prompt arrives at once -----------------------------------
  driver.prefill();

  // --- decode: one token per step ------------------------------------------
  // One backend call per step serves every (layer, kv head) cache of the shard.
  std::vector<CacheAttention> attended(caches.size());
  std::vector<CacheAttentionTask> tasks(caches.size());
  std::vector<uint8_t> keys_exact_of(caches.size(), 0);
  size_t next_measured = 0;
  for (int64_t t = P; t < T; ++t) {
    driver.arrive(t);

    const bool is_measured = next_measured < measured.size() && measured[next_measured] == t;
    if (!is_measured && !decode_attention) continue;
    for (int local = 0; local < L; ++local) {
      for (int h = 0; h < Hkv; ++h) {
        const size_t c = static_cast<size_t>(local) * Hkv + h;
        // The group's query heads are consecutive: their exact lse are too.
        const double* lse =
            is_measured ? exact[local]->lse.data() + next_measured * Hq + h * group : nullptr;
        // When every kept key is bitwise the exact key (no stage changed a kept key), the
        // exact scores of the kept tokens are the cache's scores.
        const bool keys_exact =
            is_measured && driver.ledger(local, h).keys_exact(caches[c], *layers[local], h);
        keys_exact_of[c] = keys_exact;
        tasks[c] =
            CacheAttentionTask{layers[local], h, t, &caches[c], lse, &attended[c], keys_exact};
        tasks[c].need_probs = decode_attention;
        if (!keys_exact) tasks[c].key_tiles = driver.key_tiles(local, h);
        if (is_measured) {
          share_exact_scores(*exact[local], next_measured, h, group, tasks[c]);
          const size_t first_head = next_measured * Hq + h * group;
          tasks[c].exact_out = exact[local]->out.data() + first_head * d;
          tasks[c].exact_top1 = exact[local]->top1.data() + first_head;
          tasks[c].values_exact =
              keys_exact && driver.ledger(local, h).values_exact(caches[c], *layers[local], h);
        }
      }
    }
    attention.cache_attention(meta, tasks);

    for (int local = 0; local < L; ++local) {
      const LayerData& raw = *layers[local];
      const int window = meta.sliding_window[slots[local]];
      for (int h = 0; h < Hkv; ++h) {
        HeadCache& cache = driver.cache(local, h);
        const CacheAttention& att = attended[static_cast<size_t>(local) * Hkv + h];
        const size_t n = cache.size();
        if (decode_attention) driver.observe(local, h, t, att.probs);
        if (!is_measured) continue;

        const ExactLayer& ex = *exact[local];
        // With exact keys the compressed attention is the exact one renormalised over the
        // kept tokens: its KL is 0 exactly, where the formula below would give rounding
        // noise (~1e-7).
        const bool keys_exact = keys_exact_of[static_cast<size_t>(local) * Hkv + h];
        for (int j = 0; j < group; ++j) {
          const int qh = h * group + j;
          const float* o = ex.out.data() + (next_measured * Hq + qh) * d;
          const double lse = ex.lse[next_measured * Hq + qh];
          const float* oh = att.out_hat.data() + j * d;
          double diff = 0, on = 0, ohn = 0, dot = 0;
          for (int c = 0; c < d; ++c) {
            diff += (static_cast<double>(oh[c]) - o[c]) * (static_cast<double>(oh[c]) - o[c]);
            on += static_cast<double>(o[c]) * o[c];
            ohn += static_cast<double>(oh[c]) * oh[c];
            dot += static_cast<double>(oh[c]) * o[c];
          }
          // KL(p~ || p^) with p~ = p/mass on the kept tokens and log p^_i = s_i - lse_hat
          // simplifies to (1/mass) sum_i p_i (raw_i - s_i) + lse_hat - lse - log(mass).
          const double mass = att.kept_mass[j];
          double kl = 0;
          if (mass > 0 && !keys_exact) {
            kl = att.kept_cross[j] / mass + att.lse_hat[j] - lse - std::log(mass);
          }
          StepRecord rec;
          rec.sequence = sequence;
          rec.layer = meta.layer_ids[slots[local]];
          rec.q_head = qh;
          rec.kv_head = h;
          rec.step = static_cast<int32_t>(t);
          rec.rel_err = static_cast<float>(on > 0 ? std::sqrt(diff / on) : std::sqrt(diff));
          rec.cosine = static_cast<float>(on > 0 && ohn > 0 ? dot / std::sqrt(on * ohn) : 0.0);
          rec.mass_retained = static_cast<float>(std::min(mass, 1.0));
          rec.kl = static_cast<float>(std::max(kl, 0.0));
          rec.top1_agreement = n > 0 && att.top1[j] == ex.top1[next_measured * Hq + qh];
          result.steps.push_back(rec);
        }
        // Rows summed in row order, in double.
        const KvErrorSums err = driver.ledger(local, h).sums(cache, raw, h);
        const MemoryBits bits = driver.memory(local, h);
        KvRecord kv;
        kv.sequence = sequence;
        kv.layer = meta.layer_ids[slots[local]];
        kv.kv_head = h;
        kv.step = static_cast<int32_t>(t);
        kv.kept_tokens = static_cast<int32_t>(n);
        kv.data_bits = bits.data;
        kv.meta_bits = bits.meta;
        kv.ideal_bits = bits.ideal_total();
        kv.fp16_bits = int64_t{2} * 16 * d * (t - window_start(window, t) + 1);
        kv.key_err =
            static_cast<float>(err.key_norm > 0 ? std::sqrt(err.key_diff / err.key_norm) : 0.0);
        kv.value_err = static_cast<float>(
            err.value_norm > 0 ? std::sqrt(err.value_diff / err.value_norm) : 0.0);
        result.kv.push_back(kv);
      }
    }
    if (is_measured) ++next_measured;
  }
  driver.report(result.counters, result.stage_acted);
  return result;
}

// ---------------------------------------------------------------------------
std::vector<std::vector<int>> unit_layer_groups(const std::vector<PolicySpec>& policies,
                                                const TraceMeta& meta) {
  const int L = meta.num_layers();
  UnionFind sets(L);
  for (const auto& p : policies) {
    for (const auto& g : p.layer_slot_groups(meta)) {
      for (int s : g) sets.unite(s, g[0]);
    }
  }
  return sets.groups();
}

UnitData make_unit_data(const TraceMeta& meta, int sequence, const SequenceInfo& info,
                        const std::vector<int>& slots, std::vector<LayerData> layers,
                        const MeasureRule& measure, const AttentionBackend* backend) {
  KVSIM_CHECK(slots.size() == layers.size());
  const AttentionBackend& attention = backend ? *backend : cpu_backend();
  UnitData unit;
  unit.sequence = sequence;
  unit.prompt_len = info.prompt_len;
  unit.slots = slots;
  unit.layers = std::move(layers);
  unit.measured = measure.steps(info.prompt_len, info.num_tokens);
  for (const auto& layer : unit.layers) {
    unit.exact.push_back(attention.exact_attention(meta, layer, unit.measured));
  }
  return unit;
}

RunResult replay_unit(const TraceMeta& meta, const UnitData& unit, const PolicySpec& policy,
                      const std::vector<std::shared_ptr<const PolicyState>>& prepared,
                      uint64_t seed, PrefillAttentionCache* prefill_cache,
                      const AttentionBackend* backend) {
  const auto& slots = unit.slots;
  KVSIM_CHECK(slots.size() == unit.layers.size() && slots.size() == unit.exact.size());
  const auto start = std::chrono::steady_clock::now();
  RunResult merged;
  for (const auto& g : policy.layer_slot_groups(meta)) {
    if (std::find(slots.begin(), slots.end(), g[0]) == slots.end()) continue;
    std::vector<const LayerData*> layer_ptrs;
    std::vector<const ExactLayer*> exact_ptrs;
    for (int slot : g) {
      const auto it = std::find(slots.begin(), slots.end(), slot);
      KVSIM_CHECK_MSG(it != slots.end(), "layer group not inside the unit");
      layer_ptrs.push_back(&unit.layers[it - slots.begin()]);
      exact_ptrs.push_back(&unit.exact[it - slots.begin()]);
    }
    const RunResult r =
        replay_shard(meta, unit.sequence, unit.prompt_len, g, layer_ptrs, exact_ptrs, policy,
                     prepared, unit.measured, seed, prefill_cache, backend);
    append_run(merged, r);  // records and counters; the wall time is set below
  }
  merged.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return merged;
}

void validate_sequences(const TraceReader& trace, const std::vector<int>& sequences) {
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int s = sequences[i];
    if (s < 0 || s >= trace.num_sequences()) {
      throw ConfigError("sequence " + std::to_string(s) + " out of range (trace has " +
                        std::to_string(trace.num_sequences()) + ")");
    }
    // A sequence given twice would be replayed twice and count twice in every mean.
    if (std::find(sequences.begin(), sequences.begin() + i, s) != sequences.begin() + i) {
      throw ConfigError("sequence " + std::to_string(s) + " is given twice");
    }
    const auto& info = trace.sequence(s);
    if (info.num_tokens <= info.prompt_len) {
      throw FormatError("trace sequence " + std::to_string(s) +
                        " has no decode steps (prompt_len == num_tokens): nothing to measure");
    }
  }
}

void append_run(RunResult& into, const RunResult& part) {
  into.steps.insert(into.steps.end(), part.steps.begin(), part.steps.end());
  into.kv.insert(into.kv.end(), part.kv.begin(), part.kv.end());
  for (const auto& [k, v] : part.counters) into.counters[k] += v;
  if (into.stage_acted.size() < part.stage_acted.size()) {
    into.stage_acted.resize(part.stage_acted.size(), 0);
  }
  for (size_t i = 0; i < part.stage_acted.size(); ++i) into.stage_acted[i] += part.stage_acted[i];
  into.seconds += part.seconds;
}

std::vector<RunResult> replay(const TraceReader& trace, const std::vector<PolicySpec>& policies,
                              const ReplayOptions& options) {
  const TraceMeta& meta = trace.meta();
  if (policies.empty()) throw ConfigError("no policy given");
  for (const auto& p : policies) p.check_against(meta);
  std::vector<int> sequences = options.sequences;
  if (sequences.empty()) {
    sequences.resize(trace.num_sequences());
    std::iota(sequences.begin(), sequences.end(), 0);
  }
  validate_sequences(trace, sequences);

  const auto groups = unit_layer_groups(policies, meta);
  struct Unit {
    int sequence;
    int group;
  };
  std::vector<Unit> units;
  for (int s : sequences) {
    for (int g = 0; g < static_cast<int>(groups.size()); ++g) units.push_back({s, g});
  }
  // Layers read by the value check, kept for the units that need them when reading a layer
  // again would cost more than keeping it: a deflated layer is decompressed at every read,
  // while an uncompressed one is a copy, cheaper than the page faults of keeping every layer of
  // the trace in memory at once (a `full` replay of the 4096-token synthetic trace: 30 500
  // faults and 0.16 s kept, 9 200 and 0.15 s read again; docs/performance.md).
  std::map<std::pair<int, int>, LayerData> checked_layers;
  if (options.check_values) {
    std::vector<bool> keep(trace.num_sequences(), false);  // the replayed ones, when deflated
    for (int s : sequences) keep[s] = trace.deflated();
    size_t kept_bytes = 0;
    for (int s = 0; s < trace.num_sequences(); ++s) {
      (void)trace.read_token_ids(s);
      for (int slot = 0; slot < meta.num_layers(); ++slot) {
        LayerData layer = trace.read_layer(s, slot);
        const size_t bytes = sizeof(float) * (layer.q.size() + layer.k.size() + layer.v.size());
        if (!keep[s] || kept_bytes + bytes > options.keep_checked_bytes) continue;
        kept_bytes += bytes;
        checked_layers.emplace(std::make_pair(s, slot), std::move(layer));
      }
    }
  }
  std::vector<std::vector<std::shared_ptr<const PolicyState>>> prepared;
  for (const auto& p : policies) prepared.push_back(prepare_policy(p, trace));

  // partial[unit][policy], concatenated in unit order afterwards: deterministic.
  std::vector<std::vector<RunResult>> partial(units.size());
  std::mutex io_mutex, progress_mutex;
  std::exception_ptr failure;
  size_t done = 0;
  const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (size_t u = 0; u < units.size(); ++u) {
    {
      std::lock_guard lock(progress_mutex);
      if (failure) continue;
    }
    try {
      const Unit unit = units[u];
      const auto& slots = groups[unit.group];
      std::vector<LayerData> layers;
      {
        std::lock_guard lock(io_mutex);  // HDF5 is not thread-safe
        for (int slot : slots) {
          auto kept = checked_layers.find({unit.sequence, slot});
          if (kept == checked_layers.end()) {
            layers.push_back(trace.read_layer(unit.sequence, slot));
          } else {
            layers.push_back(std::move(kept->second));
            checked_layers.erase(kept);
          }
        }
      }
      const UnitData data =
          make_unit_data(meta, unit.sequence, trace.sequence(unit.sequence), slots,
                         std::move(layers), options.measure, options.backend);
      PrefillAttentionCache prefill_cache;  // shared by the unit's policies
      for (size_t p = 0; p < policies.size(); ++p) {
        partial[u].push_back(replay_unit(meta, data, policies[p], prepared[p], options.seed,
                                         &prefill_cache, options.backend));
      }
      std::lock_guard lock(progress_mutex);
      ++done;
      if (options.progress) options.progress(done, units.size());
    } catch (...) {
      std::lock_guard lock(progress_mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);

  std::vector<RunResult> results(policies.size());
  for (size_t p = 0; p < policies.size(); ++p) {
    RunResult& r = results[p];
    r.spec = policies[p].text();
    r.resolved = policies[p].canonical();
    r.stages = policies[p].stage_names();
    r.seed = options.seed;
    for (size_t u = 0; u < units.size(); ++u) append_run(r, partial[u][p]);
  }
  return results;
}

}  // namespace kvsim
