// The resolved sweep: resolve_sweep (configs checked against traces, blocks
// and units enumerated with their costs), the sweep's identity, the value-check
// layers, a block's data, and the assembly of units into runs (sim/sweep.h).
#include <chrono>
#include <set>
#include <sstream>

#include "sim/base/errors.h"
#include "sim/sweep.h"

namespace kvsim {

std::vector<int64_t> Sweep::units_of_run(int64_t run) const {
  const int64_t configs = static_cast<int64_t>(specs.size());
  const int32_t trace = static_cast<int32_t>(run / configs);
  const int64_t config = run % configs;
  std::vector<int64_t> out;
  for (size_t b = 0; b < blocks.size(); ++b) {
    if (blocks[b].trace == trace) out.push_back(static_cast<int64_t>(b) * configs + config);
  }
  return out;
}

std::string sweep_identity(const Sweep& sweep) {
  std::ostringstream os;
  os << "kvsim-sweep v1\nmeasure " << sweep.measure.describe() << "\nseed " << sweep.seed << "\n";
  for (size_t t = 0; t < sweep.traces.size(); ++t) {
    os << "trace " << sweep.traces[t]->meta().trace_id << " sequences";
    for (int s : sweep.sequences[t]) os << " " << s;
    os << "\n";
  }
  for (const auto& spec : sweep.specs) os << "config " << spec.canonical() << "\n";
  return os.str();
}

Sweep resolve_sweep(const SweepFile& file, const std::vector<std::string>& trace_override,
                    uint64_t max_configs) {
  Sweep s;
  s.file = file.path;
  s.trace_paths = trace_override.empty() ? file.traces : trace_override;
  if (s.trace_paths.empty()) {
    throw ConfigError("sweep file " + file.path + " names no trace (traces: [a.h5, ...])");
  }
  for (const auto& path : s.trace_paths) {
    s.traces.push_back(std::make_unique<TraceReader>(path));
    for (size_t t = 0; t + 1 < s.traces.size(); ++t) {
      if (s.traces[t]->meta().trace_id == s.traces.back()->meta().trace_id) {
        throw ConfigError("traces '" + s.trace_paths[t] + "' and '" + path +
                          "' are the same trace (trace_id " + s.traces[t]->meta().trace_id + ")");
      }
    }
  }
  try {
    s.measure = MeasureRule::parse(file.measure);
  } catch (const ConfigError& e) {
    throw ConfigError("sweep file " + file.path + ": measure: " + e.what());
  }
  s.seed = file.seed;

  s.configs = expand_grid(file.policies, max_configs);
  if (s.configs.empty()) throw ConfigError("sweep file " + file.path + ": no policies");
  std::map<std::string, size_t> seen;
  for (size_t c = 0; c < s.configs.size(); ++c) {
    const SweepConfig& config = s.configs[c];
    try {
      s.specs.push_back(PolicySpec::parse(config.spec));
    } catch (const ConfigError& e) {
      throw ConfigError("sweep file " + config.origin + ": policy '" + config.spec +
                        "': " + e.what());
    }
    const auto [it, fresh] = seen.emplace(s.specs.back().canonical(), c);
    if (!fresh) {
      throw ConfigError("sweep file: policy '" + config.spec + "' (" + config.origin +
                        ") is the same configuration as '" + s.configs[it->second].spec + "' (" +
                        s.configs[it->second].origin + "): " + it->first);
    }
  }

  for (size_t t = 0; t < s.traces.size(); ++t) {
    const TraceReader& trace = *s.traces[t];
    const TraceMeta& meta = trace.meta();
    for (size_t c = 0; c < s.specs.size(); ++c) {
      try {
        s.specs[c].check_against(meta);
      } catch (const ConfigError& e) {
        throw ConfigError("policy '" + s.configs[c].spec + "' (" + s.configs[c].origin +
                          ") on trace '" + s.trace_paths[t] + "': " + e.what());
      }
    }
    std::vector<int> seqs = file.sequences;
    if (seqs.empty()) {
      for (int i = 0; i < trace.num_sequences(); ++i) seqs.push_back(i);
    }
    std::set<int> unique(seqs.begin(), seqs.end());
    if (unique.size() != seqs.size()) {
      throw ConfigError("sweep file " + file.path + ": sequences lists an index twice");
    }
    try {
      validate_sequences(trace, seqs);
    } catch (const ConfigError& e) {
      throw ConfigError("trace '" + s.trace_paths[t] + "': " + e.what());
    }
    s.sequences.push_back(seqs);
    s.groups.push_back(unit_layer_groups(s.specs, meta));
    std::vector<PolicyTraits> traits;
    for (const auto& spec : s.specs)
      traits.push_back(probe_traits(spec, meta, trace.sequence(seqs[0])));
    s.traits.push_back(traits);
  }

  const int64_t configs = static_cast<int64_t>(s.specs.size());
  std::vector<std::vector<int64_t>> shared_rows(s.traces.size());  // distinct, per trace
  for (size_t t = 0; t < s.traces.size(); ++t) {
    std::set<int64_t> rows;
    for (const auto& traits : s.traits[t]) {
      rows.insert(traits.shared_prefill_rows.begin(), traits.shared_prefill_rows.end());
    }
    shared_rows[t].assign(rows.begin(), rows.end());
  }
  for (size_t t = 0; t < s.traces.size(); ++t) {
    const TraceMeta& meta = s.traces[t]->meta();
    for (int seq : s.sequences[t]) {
      const SequenceInfo& info = s.traces[t]->sequence(seq);
      for (size_t g = 0; g < s.groups[t].size(); ++g) {
        SweepBlock block;
        block.trace = static_cast<int32_t>(t);
        block.sequence = seq;
        block.group = static_cast<int32_t>(g);
        block.overhead =
            estimate_block_overhead(meta, info, s.groups[t][g], s.measure, shared_rows[t]);
        const int64_t b = static_cast<int64_t>(s.blocks.size());
        s.blocks.push_back(block);
        for (int64_t c = 0; c < configs; ++c) {
          SweepUnit unit;
          unit.key = {block.trace, seq, block.group, static_cast<int32_t>(c)};
          unit.block = b;
          unit.cost = estimate_unit_cost(meta, info, s.groups[t][g], s.measure, s.traits[t][c]);
          s.index[unit.key] = static_cast<int64_t>(s.units.size());
          s.units.push_back(unit);
        }
      }
    }
  }
  const std::string identity = sweep_identity(s);
  s.hash = fnv1a64(identity.data(), identity.size());
  return s;
}

std::vector<LayerRef> value_check_layers(const Sweep& sweep) {
  std::vector<LayerRef> out;
  for (size_t t = 0; t < sweep.traces.size(); ++t) {
    const TraceReader& trace = *sweep.traces[t];
    for (int s = 0; s < trace.num_sequences(); ++s) {
      for (int l = 0; l < trace.meta().num_layers(); ++l) {
        out.push_back({static_cast<int32_t>(t), s, l});
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
UnitData load_block(const Sweep& sweep, const SweepBlock& block, double* io_seconds,
                    double* exact_seconds, const AttentionBackend* backend) {
  using clock = std::chrono::steady_clock;
  const TraceReader& trace = *sweep.traces[block.trace];
  const auto& slots = sweep.groups[block.trace][block.group];
  const auto t0 = clock::now();
  std::vector<LayerData> layers;
  for (int slot : slots) layers.push_back(trace.read_layer(block.sequence, slot));
  const auto t1 = clock::now();
  UnitData data = make_unit_data(trace.meta(), block.sequence, trace.sequence(block.sequence),
                                 slots, std::move(layers), sweep.measure, backend);
  const auto t2 = clock::now();
  if (io_seconds) *io_seconds += std::chrono::duration<double>(t1 - t0).count();
  if (exact_seconds) *exact_seconds += std::chrono::duration<double>(t2 - t1).count();
  return data;
}

RunResult run_unit(const Sweep& sweep, const SweepUnit& unit, const UnitData& data,
                   const std::vector<std::shared_ptr<const PolicyState>>& prepared,
                   PrefillAttentionCache* prefill_cache, const AttentionBackend* backend) {
  return replay_unit(sweep.traces[unit.key.trace]->meta(), data, sweep.specs[unit.key.config],
                     prepared, sweep.seed, prefill_cache, backend);
}

std::vector<RunResult> assemble_runs(const Sweep& sweep, const std::vector<RunResult>& parts) {
  KVSIM_CHECK(parts.size() == sweep.units.size());
  std::vector<RunResult> runs(sweep.num_runs());
  for (int64_t run = 0; run < sweep.num_runs(); ++run) {
    const size_t c = static_cast<size_t>(run % static_cast<int64_t>(sweep.specs.size()));
    RunResult& r = runs[run];
    r.spec = sweep.specs[c].text();
    r.resolved = sweep.specs[c].canonical();
    r.stages = sweep.specs[c].stage_names();
    r.seed = sweep.seed;
    for (int64_t u : sweep.units_of_run(run)) append_run(r, parts[u]);
  }
  return runs;
}

}  // namespace kvsim
