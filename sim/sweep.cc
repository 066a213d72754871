// The sweep's cost model (probe_traits, estimate_unit_cost,
// estimate_block_overhead; docs/sweeps.md) and its results file
// (write_sweep_results). The sweep file is parsed in sim/sweep_spec.cc, the
// units planned in sim/sweep_plan.cc, and run by sim/sweep_main.cc.
#include "sim/sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "sim/base/atomic_write.h"
#include "sim/base/errors.h"
#include "sim/base/h5.h"
#include "sim/results.h"

namespace kvsim {

// ---------------------------------------------------------------------------
namespace {

int64_t present_tokens(int window, int64_t t) {
  return window > 0 ? std::min<int64_t>(t + 1, window) : t + 1;
}

// Weights of the cost model (multiply-adds per unit of work); see docs/sweeps.md.
constexpr double kStoreWeight = 8;  // per stored K/V element: encode, bookkeeping
constexpr double kReadWeight = 4;   // per Q/K/V element read and converted to float

}  // namespace

PolicyTraits probe_traits(const PolicySpec& spec, const TraceMeta& meta, const SequenceInfo& info) {
  try {
    std::vector<int> group;
    for (const auto& g : spec.layer_slot_groups(meta)) {
      if (g.size() > group.size()) group = g;
    }
    if (group.empty()) return {{-1}, {}, true};
    std::vector<LayerData> dummy(group.size());
    ShardContext ctx;
    ctx.meta = &meta;
    ctx.sequence = 0;
    ctx.slots = group;
    for (size_t i = 0; i < group.size(); ++i) {
      dummy[i].slot = group[i];
      dummy[i].num_tokens = static_cast<int>(info.num_tokens);
      dummy[i].head_dim = meta.head_dim;
      ctx.layers.push_back(&dummy[i]);
    }
    ctx.prompt_len = info.prompt_len;
    ctx.num_tokens = info.num_tokens;
    const Pipeline pipeline = Pipeline::create(spec, ctx, {});
    PolicyTraits traits;
    for (size_t i = 0; i < pipeline.evicts.size(); ++i) {
      const int64_t rows = pipeline.evicts[i]->prefill_attention_rows();
      if (rows == 0) continue;
      (i == 0 ? traits.shared_prefill_rows : traits.prefill_rows).push_back(rows);
    }
    if (const int64_t rows = pipeline.store->prefill_attention_rows(); rows != 0) {
      (pipeline.evicts.empty() ? traits.shared_prefill_rows : traits.prefill_rows).push_back(rows);
    }
    traits.decode_attention = pipeline.needs_decode_attention();
    // An evict stage with integer `sinks` and `window` keeps at most their sum.
    for (const StageSpec& stage : spec.stages()) {
      if (stage.info->kind != StageKind::kEvict) continue;
      auto has_int = [&](const std::string& name) {
        return std::any_of(
            stage.info->params.begin(), stage.info->params.end(),
            [&](const ParamSpec& p) { return p.name == name && p.type == ParamType::kInt; });
      };
      if (has_int("sinks") && has_int("window")) {
        const int64_t cap = stage.params.get_int("sinks") + stage.params.get_int("window");
        traits.cache_cap = traits.cache_cap < 0 ? cap : std::min(traits.cache_cap, cap);
      }
    }
    return traits;
  } catch (...) {
    return {{-1}, {}, true};  // e.g. a stage that needs prepared state: assume the most work
  }
}

int64_t PolicyTraits::prefill_rows_summary() const {
  int64_t sum = 0;
  for (const auto* list : {&prefill_rows, &shared_prefill_rows}) {
    for (int64_t rows : *list) {
      if (rows < 0) return -1;
      sum += rows;
    }
  }
  return sum;
}

double estimate_unit_cost(const TraceMeta& meta, const SequenceInfo& info,
                          const std::vector<int>& slots, const MeasureRule& measure,
                          const PolicyTraits& traits) {
  const int64_t P = info.prompt_len, T = info.num_tokens;
  const double hq = meta.num_q_heads, hkv = meta.num_kv_heads, d = meta.head_dim;
  const auto measured = measure.steps(P, T);
  double cost = 0;
  for (int slot : slots) {
    const int window = meta.sliding_window[slot];
    double measured_n = 0, all_n = 0, prefill_n = 0;
    auto kept = [&](int64_t t) {
      const int64_t n = present_tokens(window, t);
      return traits.cache_cap >= 0 ? std::min<int64_t>(n, traits.cache_cap + 1) : n;
    };
    for (int64_t t : measured) measured_n += kept(t);
    // Measured steps: compressed attention (scores + weighted sum), exact scores
    // and K/V reconstruction error, all over the kept entries: the exact cache,
    // or at most sinks + window + 1 for a sliding cache (other evicting policies
    // keep fewer: for them the estimate is an upper bound).
    cost += (3 * hq + 2 * hkv) * d * measured_n;
    if (traits.decode_attention) {
      for (int64_t t = P; t < T; ++t) all_n += kept(t);
      cost += hq * d * (all_n - measured_n);
    }
    for (int64_t stage_rows : traits.prefill_rows) {
      const int64_t rows = stage_rows < 0 ? P : std::min<int64_t>(stage_rows, P);
      for (int64_t r = P - rows; r < P; ++r) prefill_n += present_tokens(window, r);
    }
    cost += 2 * hq * d * prefill_n;  // scores + softmax column sums
    cost += kStoreWeight * hkv * d * static_cast<double>(T);
  }
  return cost;
}

double estimate_block_overhead(const TraceMeta& meta, const SequenceInfo& info,
                               const std::vector<int>& slots, const MeasureRule& measure,
                               const std::vector<int64_t>& shared_prefill_rows) {
  const double hq = meta.num_q_heads, hkv = meta.num_kv_heads, d = meta.head_dim;
  const auto measured = measure.steps(info.prompt_len, info.num_tokens);
  double cost = 0;
  for (int slot : slots) {
    double measured_n = 0;
    for (int64_t t : measured) measured_n += present_tokens(meta.sliding_window[slot], t);
    cost += kReadWeight * (hq + 2 * hkv) * d * static_cast<double>(info.num_tokens);
    cost += 2 * hq * d * measured_n;  // exact attention: scores + weighted sum
    for (int64_t stage_rows : shared_prefill_rows) {
      const int64_t P = info.prompt_len;
      const int64_t rows = stage_rows < 0 ? P : std::min<int64_t>(stage_rows, P);
      double prefill_n = 0;
      for (int64_t r = P - rows; r < P; ++r) {
        prefill_n += present_tokens(meta.sliding_window[slot], r);
      }
      cost += 2 * hq * d * prefill_n;
    }
  }
  return cost;
}

// ---------------------------------------------------------------------------
namespace {

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

std::string hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string run_group_name(int64_t i) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%04lld", static_cast<long long>(i));
  return buf;
}

void add_sweep_objects(hid_t root, const Sweep& sweep, const std::vector<RunResult>& parts,
                       const SweepReport& report) {
  const int64_t configs = static_cast<int64_t>(sweep.specs.size());
  h5::write_attr(root, "num_traces", static_cast<int64_t>(sweep.traces.size()));

  // Trace columns of /summary and attributes of each run.
  {
    std::vector<std::string> trace_col, id_col;
    std::vector<int32_t> trace_index, config_col;
    h5::Handle runs = h5::open_group(root, "runs", "results");
    for (int64_t run = 0; run < sweep.num_runs(); ++run) {
      const int32_t t = static_cast<int32_t>(run / configs);
      const int32_t c = static_cast<int32_t>(run % configs);
      trace_col.push_back(sweep.trace_paths[t]);
      id_col.push_back(sweep.traces[t]->meta().trace_id);
      trace_index.push_back(t);
      config_col.push_back(c);
      h5::Handle group = h5::open_group(runs.get(), run_group_name(run), "results");
      h5::write_attr(group.get(), "trace_path", sweep.trace_paths[t]);
      h5::write_attr(group.get(), "trace_id", sweep.traces[t]->meta().trace_id);
      h5::write_attr(group.get(), "trace_index", static_cast<int64_t>(t));
      h5::write_attr(group.get(), "config", static_cast<int64_t>(c));
      h5::write_attr(group.get(), "origin", sweep.configs[c].origin);
    }
    h5::Handle summary = h5::open_group(root, "summary", "results");
    h5::write_vector(summary.get(), "trace", trace_col);
    h5::write_vector(summary.get(), "trace_id", id_col);
    h5::write_vector(summary.get(), "trace_index", trace_index);
    h5::write_vector(summary.get(), "config", config_col);
  }
  {
    h5::Handle traces = h5::create_group(root, "traces");
    std::vector<int32_t> index, num_sequences;
    std::vector<std::string> path, id, model;
    for (size_t t = 0; t < sweep.traces.size(); ++t) {
      index.push_back(static_cast<int32_t>(t));
      path.push_back(sweep.trace_paths[t]);
      id.push_back(sweep.traces[t]->meta().trace_id);
      model.push_back(sweep.traces[t]->meta().model_name);
      num_sequences.push_back(sweep.traces[t]->num_sequences());
    }
    h5::write_vector(traces.get(), "trace_index", index);
    h5::write_vector(traces.get(), "path", path);
    h5::write_vector(traces.get(), "trace_id", id);
    h5::write_vector(traces.get(), "model_name", model);
    h5::write_vector(traces.get(), "num_sequences", num_sequences);
  }
  if (sweep.traces.size() > 1 && !h5::exists(root, "sequences")) {
    h5::Handle seqs = h5::create_group(root, "sequences");
    std::vector<int32_t> trace, seq, prompt, tokens;
    for (size_t t = 0; t < sweep.traces.size(); ++t) {
      for (int s = 0; s < sweep.traces[t]->num_sequences(); ++s) {
        trace.push_back(static_cast<int32_t>(t));
        seq.push_back(s);
        prompt.push_back(static_cast<int32_t>(sweep.traces[t]->sequence(s).prompt_len));
        tokens.push_back(static_cast<int32_t>(sweep.traces[t]->sequence(s).num_tokens));
      }
    }
    h5::write_vector(seqs.get(), "trace_index", trace);
    h5::write_vector(seqs.get(), "sequence", seq);
    h5::write_vector(seqs.get(), "prompt_len", prompt);
    h5::write_vector(seqs.get(), "num_tokens", tokens);
  }

  // /sweep: how the sweep ran (differs between runs of the same sweep).
  h5::Handle sw = h5::create_group(root, "sweep");
  const hid_t g = sw.get();
  h5::write_attr(g, "sweep_file", report.sweep_file);
  h5::write_attr(g, "sweep_hash", hex64(sweep.hash));
  h5::write_attr(g, "kvsim_version", report.kvsim_version);
  h5::write_attr(g, "ranks", static_cast<int64_t>(report.ranks));
  h5::write_attr(g, "threads_per_rank", static_cast<int64_t>(report.threads));
  h5::write_attr(g, "units_total", static_cast<int64_t>(sweep.units.size()));
  h5::write_attr(g, "units_from_checkpoint", report.units_from_checkpoint);
  h5::write_attr(g, "units_computed", report.units_computed);
  h5::write_attr(g, "wall_seconds", report.wall_seconds);
  h5::write_attr(g, "gather_seconds", report.gather_seconds);
  {
    h5::Handle t = h5::create_group(g, "configs");
    std::vector<int32_t> index, decode;
    std::vector<int64_t> prefill;
    std::vector<std::string> spec, resolved, origin;
    for (size_t c = 0; c < sweep.specs.size(); ++c) {
      index.push_back(static_cast<int32_t>(c));
      spec.push_back(sweep.configs[c].spec);
      resolved.push_back(sweep.specs[c].canonical());
      origin.push_back(sweep.configs[c].origin);
      prefill.push_back(sweep.traits[0][c].prefill_rows_summary());
      decode.push_back(sweep.traits[0][c].decode_attention ? 1 : 0);
    }
    h5::write_vector(t.get(), "config", index);
    h5::write_vector(t.get(), "spec", spec);
    h5::write_vector(t.get(), "resolved", resolved);
    h5::write_vector(t.get(), "origin", origin);
    h5::write_vector(t.get(), "prefill_attention_rows", prefill);
    h5::write_vector(t.get(), "decode_attention", decode);
  }
  {
    h5::Handle t = h5::create_group(g, "units");
    const size_t n = sweep.units.size();
    std::vector<int32_t> trace(n), seq(n), group(n), config(n), rank(n), first_layer(n);
    std::vector<int64_t> run(n), block(n);
    std::vector<double> seconds(n), cost(n);
    for (size_t u = 0; u < n; ++u) {
      const SweepUnit& unit = sweep.units[u];
      trace[u] = unit.key.trace, seq[u] = unit.key.sequence, group[u] = unit.key.group;
      config[u] = unit.key.config;
      rank[u] = u < report.unit_rank.size() ? report.unit_rank[u] : -1;
      const int slot = sweep.groups[unit.key.trace][unit.key.group][0];
      first_layer[u] = sweep.traces[unit.key.trace]->meta().layer_ids[slot];
      run[u] = sweep.run_of(unit.key);
      block[u] = unit.block;
      seconds[u] = parts[u].seconds;
      cost[u] = unit.cost;
    }
    h5::write_vector(t.get(), "trace_index", trace);
    h5::write_vector(t.get(), "sequence", seq);
    h5::write_vector(t.get(), "group", group);
    h5::write_vector(t.get(), "first_layer", first_layer);
    h5::write_vector(t.get(), "config", config);
    h5::write_vector(t.get(), "run", run);
    h5::write_vector(t.get(), "block", block);
    h5::write_vector(t.get(), "rank", rank);
    h5::write_vector(t.get(), "seconds", seconds);
    h5::write_vector(t.get(), "estimated_cost", cost);
  }
  {
    h5::Handle t = h5::create_group(g, "ranks");
    std::vector<int32_t> rank;
    std::vector<int64_t> units, blocks;
    std::vector<double> validate, io, exact, unit_s, ckpt, fsync, work, est;
    for (size_t r = 0; r < report.rank_stats.size(); ++r) {
      const RankStats& s = report.rank_stats[r];
      rank.push_back(static_cast<int32_t>(r));
      units.push_back(s.units), blocks.push_back(s.blocks);
      validate.push_back(s.validate_seconds), io.push_back(s.io_seconds);
      exact.push_back(s.exact_seconds), unit_s.push_back(s.unit_seconds);
      ckpt.push_back(s.checkpoint_seconds), fsync.push_back(s.fsync_seconds);
      work.push_back(s.work_seconds);
      est.push_back(s.estimated_cost);
    }
    h5::write_vector(t.get(), "rank", rank);
    h5::write_vector(t.get(), "units", units);
    h5::write_vector(t.get(), "blocks", blocks);
    h5::write_vector(t.get(), "validate_seconds", validate);
    h5::write_vector(t.get(), "io_seconds", io);
    h5::write_vector(t.get(), "exact_seconds", exact);
    h5::write_vector(t.get(), "unit_seconds", unit_s);
    h5::write_vector(t.get(), "checkpoint_seconds", ckpt);
    h5::write_vector(t.get(), "fsync_seconds", fsync);
    h5::write_vector(t.get(), "work_seconds", work);
    h5::write_vector(t.get(), "estimated_cost", est);
  }
}

}  // namespace

void write_sweep_results(const std::string& path, const Sweep& sweep,
                         const std::vector<RunResult>& runs, const std::vector<RunResult>& parts,
                         const SweepReport& report) {
  ResultsContext context;
  context.trace_path = join(sweep.trace_paths, ";");
  context.kvsim_version = report.kvsim_version;
  context.measured_steps = sweep.measure.describe();
  TraceMeta meta = sweep.traces[0]->meta();
  if (sweep.traces.size() == 1) {
    const TraceReader& trace = *sweep.traces[0];
    for (int s = 0; s < trace.num_sequences(); ++s) context.sequences.push_back(trace.sequence(s));
  } else {
    std::vector<std::string> ids, names;
    for (const auto& t : sweep.traces) {
      ids.push_back(t->meta().trace_id);
      names.push_back(t->meta().model_name);
    }
    meta.trace_id = join(ids, ";");
    meta.model_name = join(names, ";");
  }
  // write_results() writes `tmp` atomically itself; the sweep's additions go into it before the
  // final rename.
  atomic_write(
      path,
      [&](const std::string& tmp) {
        write_results(tmp, meta, context, runs);
        h5::Handle file = h5::checked(H5Fopen(tmp.c_str(), H5F_ACC_RDWR, H5P_DEFAULT),
                                      "cannot reopen '" + tmp + "'");
        add_sweep_objects(file.get(), sweep, parts, report);
        h5::check(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), "cannot flush '" + tmp + "'");
      },
      ".sweep-tmp.");
}

}  // namespace kvsim
