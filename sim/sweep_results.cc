// Writes a sweep's results file: the common tables through write_results(),
// then the sweep's own tables (below, each a row type and its columns).
#include "sim/sweep_results.h"

#include <cstdio>

#include "sim/results.h"
#include "sim/sweep.h"
#include "sim/table_io.h"

namespace kvsim {
namespace {

// Columns /summary gets in a sweep.
struct SweepRunRow {
  std::string trace, trace_id;
  int32_t trace_index = 0, config = 0;
};
const Column<SweepRunRow> kSweepRunColumns[] = {
    {"trace", &SweepRunRow::trace, "", "the run's trace, its path as given"},
    {"trace_id", &SweepRunRow::trace_id, "", "the trace's identity (`trace_id` attribute)"},
    {"trace_index", &SweepRunRow::trace_index, "", "index of the trace in `/traces`"},
    {"config", &SweepRunRow::config, "", "index of the configuration in `/sweep/configs`"},
};

struct TraceRow {
  int32_t trace_index = 0;
  std::string path, trace_id, model_name;
  int32_t num_sequences = 0;
};
const Column<TraceRow> kTraceColumns[] = {
    {"trace_index", &TraceRow::trace_index, "", "index of the trace"},
    {"path", &TraceRow::path, "", "its path as given"},
    {"trace_id", &TraceRow::trace_id, "", "its identity"},
    {"model_name", &TraceRow::model_name, "", "the model that made it"},
    {"num_sequences", &TraceRow::num_sequences, "", "sequences it holds"},
};

struct ConfigRow {
  int32_t config = 0;
  std::string spec, resolved, origin;
  int64_t prefill_attention_rows = 0;
  int32_t decode_attention = 0;
};
const Column<ConfigRow> kConfigColumns[] = {
    {"config", &ConfigRow::config, "", "index of the configuration in the expanded grid"},
    {"spec", &ConfigRow::spec, "", "the spec after substituting the grid values"},
    {"resolved", &ConfigRow::resolved, "", "the canonical spec with every parameter"},
    {"origin", &ConfigRow::origin, "", "where it came from (`sweep.yaml:12 bits=2 group=32`)"},
    {"prefill_attention_rows", &ConfigRow::prefill_attention_rows, "tokens",
     "prompt rows of exact attention its stages ask for (`-1`: all)"},
    {"decode_attention", &ConfigRow::decode_attention, "",
     "`1` when a stage needs attention at every decode step"},
};

struct UnitRow {
  int32_t trace_index = 0, sequence = 0, group = 0, first_layer = 0, config = 0;
  int64_t run = 0, block = 0;
  int32_t rank = 0;
  double seconds = 0, estimated_cost = 0;
};
const Column<UnitRow> kUnitColumns[] = {
    {"trace_index", &UnitRow::trace_index, "", "the unit's trace"},
    {"sequence", &UnitRow::sequence, "", "its sequence in that trace"},
    {"group", &UnitRow::group, "", "its layer group (index in the trace's unit layer groups)"},
    {"first_layer", &UnitRow::first_layer, "", "original index of the group's first layer"},
    {"config", &UnitRow::config, "", "its configuration"},
    {"run", &UnitRow::run, "", "the run its records belong to (`/runs/NNNN`)"},
    {"block", &UnitRow::block, "", "the block (trace, sequence, layer group) it ran on"},
    {"rank", &UnitRow::rank, "", "the rank that computed it (`-1`: from a checkpoint)"},
    {"seconds", &UnitRow::seconds, "s", "its replay time"},
    {"estimated_cost", &UnitRow::estimated_cost, "",
     "the planner's estimate (attention multiply-adds)"},
};

struct RankRow : RankStats {
  int32_t rank = 0;
};
const Column<RankRow> kRankColumns[] = {
    {"rank", &RankRow::rank, "", "MPI rank"},
    {"units", &RankRow::units, "", "units it computed"},
    {"blocks", &RankRow::blocks, "", "blocks it read"},
    {"validate_seconds", &RankRow::validate_seconds, "s",
     "reading trace values for the NaN/Inf check"},
    {"io_seconds", &RankRow::io_seconds, "s", "reading blocks"},
    {"exact_seconds", &RankRow::exact_seconds, "s", "exact attention of blocks"},
    {"unit_seconds", &RankRow::unit_seconds, "s", "sum of its units' replay time"},
    {"checkpoint_seconds", &RankRow::checkpoint_seconds, "s", "appending checkpoint records"},
    {"fsync_seconds", &RankRow::fsync_seconds, "s", "fsync of checkpoint records"},
    {"work_seconds", &RankRow::work_seconds, "s",
     "wall time from the start of work to its last unit"},
    {"estimated_cost", &RankRow::estimated_cost, "", "the plan's load of the rank"},
};

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

template <typename Row>
void write_table(hid_t parent, const std::string& name, const std::vector<Row>& rows,
                 Columns<Row> columns) {
  h5::Handle group = h5::create_group(parent, name);
  write_columns(group.get(), rows, columns);
}

// Trace columns of /summary and attributes of each run.
void add_run_trace_columns(hid_t root, const Sweep& sweep) {
  const int64_t configs = static_cast<int64_t>(sweep.specs.size());
  std::vector<SweepRunRow> rows;
  h5::Handle runs = h5::open_group(root, "runs", "results");
  for (int64_t run = 0; run < sweep.num_runs(); ++run) {
    const int32_t t = static_cast<int32_t>(run / configs);
    const int32_t c = static_cast<int32_t>(run % configs);
    rows.push_back({sweep.trace_paths[t], sweep.traces[t]->meta().trace_id, t, c});
    h5::Handle group = h5::open_group(runs.get(), run_group_name(run), "results");
    h5::write_attr(group.get(), "trace_path", sweep.trace_paths[t]);
    h5::write_attr(group.get(), "trace_id", sweep.traces[t]->meta().trace_id);
    h5::write_attr(group.get(), "trace_index", static_cast<int64_t>(t));
    h5::write_attr(group.get(), "config", static_cast<int64_t>(c));
    h5::write_attr(group.get(), "origin", sweep.configs[c].origin);
  }
  h5::Handle summary = h5::open_group(root, "summary", "results");
  write_columns<SweepRunRow>(summary.get(), rows, kSweepRunColumns);
}

void add_sweep_objects(hid_t root, const Sweep& sweep, const std::vector<RunResult>& parts,
                       const SweepReport& report) {
  h5::write_attr(root, "num_traces", static_cast<int64_t>(sweep.traces.size()));
  add_run_trace_columns(root, sweep);
  std::vector<TraceRow> traces;
  for (size_t t = 0; t < sweep.traces.size(); ++t) {
    const TraceMeta& meta = sweep.traces[t]->meta();
    traces.push_back({static_cast<int32_t>(t), sweep.trace_paths[t], meta.trace_id, meta.model_name,
                      sweep.traces[t]->num_sequences()});
  }
  write_table<TraceRow>(root, "traces", traces, kTraceColumns);
  if (sweep.traces.size() > 1 && !h5::exists(root, "sequences")) {
    std::vector<SequenceRow> sequences;
    for (size_t t = 0; t < sweep.traces.size(); ++t) {
      for (int s = 0; s < sweep.traces[t]->num_sequences(); ++s) {
        const SequenceInfo& info = sweep.traces[t]->sequence(s);
        sequences.push_back({static_cast<int32_t>(t), s, static_cast<int32_t>(info.prompt_len),
                             static_cast<int32_t>(info.num_tokens)});
      }
    }
    write_table<SequenceRow>(root, "sequences", sequences, kSequenceColumns);
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

  std::vector<ConfigRow> configs;
  for (size_t c = 0; c < sweep.specs.size(); ++c) {
    configs.push_back({static_cast<int32_t>(c), sweep.configs[c].spec, sweep.specs[c].canonical(),
                       sweep.configs[c].origin, sweep.traits[0][c].prefill_rows_summary(),
                       sweep.traits[0][c].decode_attention ? 1 : 0});
  }
  write_table<ConfigRow>(g, "configs", configs, kConfigColumns);

  std::vector<UnitRow> units;
  for (size_t u = 0; u < sweep.units.size(); ++u) {
    const SweepUnit& unit = sweep.units[u];
    const int slot = sweep.groups[unit.key.trace][unit.key.group][0];
    units.push_back({unit.key.trace, unit.key.sequence, unit.key.group,
                     sweep.traces[unit.key.trace]->meta().layer_ids[slot], unit.key.config,
                     sweep.run_of(unit.key), unit.block,
                     u < report.unit_rank.size() ? report.unit_rank[u] : -1, parts[u].seconds,
                     unit.cost});
  }
  write_table<UnitRow>(g, "units", units, kUnitColumns);

  std::vector<RankRow> ranks;
  for (size_t r = 0; r < report.rank_stats.size(); ++r) {
    ranks.push_back({report.rank_stats[r], static_cast<int32_t>(r)});
  }
  write_table<RankRow>(g, "ranks", ranks, kRankColumns);
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
  write_results(path, meta, context, runs,
                [&](hid_t root) { add_sweep_objects(root, sweep, parts, report); });
}

std::vector<TableDoc> sweep_tables() {
  return {
      {"sweep_summary", "/summary (sweep columns)", "after the columns above, one row per run",
       column_docs<SweepRunRow>(kSweepRunColumns)},
      {"sweep_traces", "/traces", "one row per trace of the sweep",
       column_docs<TraceRow>(kTraceColumns)},
      {"sweep_sequences", "/sequences (a sweep over several traces)",
       "one row per (trace, sequence)", column_docs<SequenceRow>(kSequenceColumns)},
      {"sweep_configs", "/sweep/configs", "one row per configuration of the grid",
       column_docs<ConfigRow>(kConfigColumns)},
      {"sweep_units", "/sweep/units", "one row per unit (trace, sequence, layer group, config)",
       column_docs<UnitRow>(kUnitColumns)},
      {"sweep_ranks", "/sweep/ranks", "one row per MPI rank", column_docs<RankRow>(kRankColumns)},
  };
}

}  // namespace kvsim
