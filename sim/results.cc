#include "sim/results.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <stdexcept>

#include "sim/base/atomic_write.h"
#include "sim/base/errors.h"
#include "sim/stage_activity.h"
#include "sim/table_io.h"

namespace kvsim {

Stats compute_stats(std::vector<double>& v) {
  Stats s;
  s.count = static_cast<int64_t>(v.size());
  if (v.empty()) return s;
  if (!std::is_sorted(v.begin(), v.end())) std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / v.size();
  auto pct = [&](double q) {
    const double pos = q * (v.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - lo);
  };
  s.p50 = pct(0.5);
  s.p95 = pct(0.95);
  s.max = v.back();
  return s;
}

// --- /summary -------------------------------------------------------------------
namespace {

// The statistics of the columns summarize() has sorted for the run it is summarizing, by the
// column's "`table/name`" (set only during that call, on its thread).
thread_local std::map<std::string, Stats>* summary_memo = nullptr;

// A /summary column and how it is computed from a run (and the columns before it).
struct SummaryRule {
  SummaryColumn column;
  std::function<double(const RunResult&, const RunSummary&)> value;
};

template <typename Record>
std::vector<double> column_values(const Column<Record>& column,
                                  const std::vector<Record>& records) {
  std::vector<double> values;
  values.reserve(records.size());
  for (const Record& r : records) values.push_back(numeric_cell(column, r));
  return values;
}

// The statistics (kMean, kMeanP95) or the sums (kSum) of one record table.
template <typename Record>
void add_record_rules(std::vector<SummaryRule>& rules, const std::string& table,
                      Columns<Record> columns, std::vector<Record> RunResult::*records, bool sums) {
  for (const Column<Record>& c : columns) {
    const std::string name = c.name, where = "`" + table + "/" + name + "`";
    const std::string label = c.label ? c.label : "";
    if (sums && c.summary == Summary::kSum) {
      rules.push_back({{name, c.unit, where + " summed over the run's rows", label, c.precision},
                       [c, records](const RunResult& run, const RunSummary&) {
                         double sum = 0;
                         for (const Record& r : run.*records) sum += numeric_cell(c, r);
                         return sum;
                       }});
    } else if (!sums && c.summary == Summary::kMean) {
      rules.push_back({{name + "_mean", c.unit, "mean of " + where + " over the run's rows", label,
                        c.precision},
                       [c, records](const RunResult& run, const RunSummary&) {
                         double sum = 0;
                         for (const Record& r : run.*records) sum += numeric_cell(c, r);
                         return sum /
                                static_cast<double>(std::max<size_t>((run.*records).size(), 1));
                       }});
    } else if (!sums && c.summary == Summary::kMeanP95) {
      // The mean of the sorted sample (compute_stats), as the percentile.
      const std::string mean_label = label.empty() ? "" : label + " mean";
      const std::string p95_label = label.empty() ? "" : label + " p95";
      // Both rules need the column sorted: sorted once per summarize() call.
      const auto stats_of = [c, records, where](const RunResult& run) {
        if (summary_memo != nullptr) {
          const auto it = summary_memo->find(where);
          if (it != summary_memo->end()) return it->second;
        }
        std::vector<double> v = column_values(c, run.*records);
        const Stats stats = compute_stats(v);
        if (summary_memo != nullptr) summary_memo->emplace(where, stats);
        return stats;
      };
      rules.push_back(
          {{name + "_mean", c.unit, "mean of " + where + " over the run's rows", mean_label,
            c.precision},
           [stats_of](const RunResult& run, const RunSummary&) { return stats_of(run).mean; }});
      rules.push_back(
          {{name + "_p95", c.unit, "95th percentile (linear interpolation) of " + where, p95_label,
            c.precision},
           [stats_of](const RunResult& run, const RunSummary&) { return stats_of(run).p95; }});
    }
  }
}

double ratio(double num, double den) { return den > 0 ? num / den : 0; }

std::vector<SummaryRule> build_summary_rules() {
  std::vector<SummaryRule> rules;
  const Columns<StepRecord> steps = kStepColumns;
  const Columns<KvRecord> kv = kKvColumns;
  add_record_rules(rules, "steps", steps, &RunResult::steps, false);
  add_record_rules(rules, "kv", kv, &RunResult::kv, false);
  add_record_rules(rules, "steps", steps, &RunResult::steps, true);
  add_record_rules(rules, "kv", kv, &RunResult::kv, true);
  rules.push_back(
      {{"memory_ratio", "", "`(data_bits + meta_bits) / fp16_bits` (1.0 = fp16; lower is smaller)",
        "memory vs fp16"},
       [](const RunResult&, const RunSummary& s) {
         return ratio(s["data_bits"] + s["meta_bits"], s["fp16_bits"]);
       }});
  rules.push_back({{"memory_ratio_ideal", "",
                    "`ideal_bits / fp16_bits`: the payload at its ideal rate; differs from "
                    "`memory_ratio` only for ternary (1.5-bit) codes",
                    ""},
                   [](const RunResult&, const RunSummary& s) {
                     return ratio(s["ideal_bits"], s["fp16_bits"]);
                   }});
  rules.push_back({{"bits_per_element", "bits",
                    "`16 * memory_ratio`: average bits per cached K or V element", "bits/elem"},
                   [](const RunResult&, const RunSummary& s) { return 16 * s["memory_ratio"]; }});
  rules.push_back({{"seconds", "s", "wall time of the run", ""},
                   [](const RunResult& run, const RunSummary&) { return run.seconds; }});
  return rules;
}

const std::vector<SummaryRule>& summary_rules() {
  static const std::vector<SummaryRule> rules = build_summary_rules();
  return rules;
}

// /summary's first columns.
struct SummaryKeys {
  int32_t run = 0;
  std::string spec, resolved;
};
const Column<SummaryKeys> kSummaryKeyColumns[] = {
    {"run", &SummaryKeys::run, "", "index of the run; its group is `/runs/NNNN` (4 digits)"},
    {"spec", &SummaryKeys::spec, "", "the spec as the user wrote it"},
    {"resolved", &SummaryKeys::resolved, "",
     "the canonical spec with every parameter, defaults included"},
};

}  // namespace

const std::vector<SummaryColumn>& summary_columns() {
  static const std::vector<SummaryColumn> columns = [] {
    std::vector<SummaryColumn> out;
    for (const auto& rule : summary_rules()) out.push_back(rule.column);
    return out;
  }();
  return columns;
}

double RunSummary::operator[](std::string_view column) const {
  const auto& columns = summary_columns();
  for (size_t i = 0; i < columns.size() && i < values.size(); ++i) {
    if (columns[i].name == column) return values[i];
  }
  throw std::out_of_range("no /summary column '" + std::string(column) + "'");
}

RunSummary summarize(const RunResult& run) { return summarize(run, {}); }

RunSummary summarize(const RunResult& run, std::map<std::string, Stats> known) {
  RunSummary s;
  std::map<std::string, Stats>& memo = known;
  summary_memo = &memo;
  try {
    for (const auto& rule : summary_rules()) s.values.push_back(rule.value(run, s));
  } catch (...) {
    summary_memo = nullptr;
    throw;
  }
  summary_memo = nullptr;
  return s;
}

// --- the other tables -------------------------------------------------------------
const Column<SequenceRow> kSequenceColumns[4] = {
    {"trace_index", &SequenceRow::trace_index, "",
     "index of the trace in `/traces` (only in a sweep over several traces)"},
    {"sequence", &SequenceRow::sequence, "", "index in the trace"},
    {"prompt_len", &SequenceRow::prompt_len, "tokens",
     "prefill length `P`: steps `t >= P` are decode steps (`t - P` is the decode step index)"},
    {"num_tokens", &SequenceRow::num_tokens, "tokens", "`T`"},
};

namespace {

struct CounterRow {
  std::string name;
  double value = 0;
};
const Column<CounterRow> kCounterColumns[] = {
    {"name", &CounterRow::name, "", "counter name, e.g. `minicache.merged`"},
    {"value", &CounterRow::value, "", "summed over every shard of the run"},
};

struct AggregateRow {
  std::string metric, scope;
  int32_t layer = 0, head = 0;
  int64_t count = 0;
  double mean = 0, p50 = 0, p95 = 0, max = 0;
};
const Column<AggregateRow> kAggregateColumns[] = {
    {"metric", &AggregateRow::metric, "",
     "the record column described: each `steps` and `kv` column with a mean in `/summary`"},
    {"scope", &AggregateRow::scope, "", "`overall`, `layer`, `head` (per layer and head)"},
    {"layer", &AggregateRow::layer, "", "original layer index, `-1` for `overall`"},
    {"head", &AggregateRow::head, "",
     "query head for `steps` metrics, KV head for `kv` metrics; `-1` unless scope is `head`"},
    {"count", &AggregateRow::count, "", "number of samples"},
    {"mean", &AggregateRow::mean, "", "mean of the samples"},
    {"p50", &AggregateRow::p50, "", "median (linear interpolation)"},
    {"p95", &AggregateRow::p95, "", "95th percentile (linear interpolation)"},
    {"max", &AggregateRow::max, "", "largest sample"},
};

bool aggregated(Summary summary) {
  return summary == Summary::kMean || summary == Summary::kMeanP95;
}

void add_aggregate(std::vector<AggregateRow>& rows, const char* metric, const char* scope,
                   int layer, int head, std::vector<double>& values) {
  const Stats s = compute_stats(values);
  rows.push_back({metric, scope, layer, head, s.count, s.mean, s.p50, s.p95, s.max});
}

// The sorted union of sorted samples (pairwise merges: O(n log k), where sorting the union again
// would be O(n log n); a results file of many runs spent most of its writing time sorting).
std::vector<double> merge_sorted(std::vector<std::vector<double>> parts) {
  if (parts.empty()) return {};
  while (parts.size() > 1) {
    std::vector<std::vector<double>> next;
    for (size_t i = 0; i + 1 < parts.size(); i += 2) {
      std::vector<double> merged(parts[i].size() + parts[i + 1].size());
      std::merge(parts[i].begin(), parts[i].end(), parts[i + 1].begin(), parts[i + 1].end(),
                 merged.begin());
      next.push_back(std::move(merged));
    }
    if (parts.size() % 2 == 1) next.push_back(std::move(parts.back()));
    parts = std::move(next);
  }
  return std::move(parts[0]);
}

// Overall, per-layer and per-(layer, head) rows of every aggregated column of a record table.
// Each (layer, head) sample is sorted once; a layer's and the overall sample are merged from
// them (compute_stats sorts again: a sorted vector takes it no time).
template <typename Record>
void aggregate_records(std::vector<AggregateRow>& rows, Columns<Record> columns,
                       const std::vector<Record>& records, int32_t Record::*head,
                       const std::string& table, std::map<std::string, Stats>& overall) {
  // The (layer, head) of every record, numbered in (layer, head) order, once for all columns.
  std::map<std::pair<int, int>, int> group_ids;
  for (const Record& r : records) group_ids.emplace(std::make_pair(r.layer, r.*head), 0);
  std::vector<std::pair<int, int>> groups;
  for (auto& [lh, id] : group_ids) id = static_cast<int>(groups.size()), groups.push_back(lh);
  std::vector<int> group_of(records.size());
  std::vector<size_t> group_size(groups.size(), 0);
  for (size_t i = 0; i < records.size(); ++i) {
    group_of[i] = group_ids.at({records[i].layer, records[i].*head});
    ++group_size[group_of[i]];
  }
  for (const Column<Record>& c : columns) {
    if (!aggregated(c.summary)) continue;
    std::vector<std::vector<double>> per_head(groups.size());
    for (size_t g = 0; g < groups.size(); ++g) per_head[g].reserve(group_size[g]);
    for (size_t i = 0; i < records.size(); ++i) {
      per_head[group_of[i]].push_back(numeric_cell(c, records[i]));
    }
    std::vector<AggregateRow> head_rows, layer_rows;
    std::vector<std::vector<double>> layers, heads_of_layer;
    for (size_t g = 0; g < groups.size(); ++g) {
      add_aggregate(head_rows, c.name, "head", groups[g].first, groups[g].second,
                    per_head[g]);  // sorts it
      heads_of_layer.push_back(std::move(per_head[g]));
      if (g + 1 == groups.size() || groups[g + 1].first != groups[g].first) {
        std::vector<double> v = merge_sorted(std::move(heads_of_layer));
        heads_of_layer.clear();
        add_aggregate(layer_rows, c.name, "layer", groups[g].first, -1, v);
        layers.push_back(std::move(v));
      }
    }
    std::vector<double> all = merge_sorted(std::move(layers));
    overall["`" + table + "/" + c.name + "`"] = compute_stats(all);  // as /summary names it
    add_aggregate(rows, c.name, "overall", -1, -1, all);
    rows.insert(rows.end(), layer_rows.begin(), layer_rows.end());
    rows.insert(rows.end(), head_rows.begin(), head_rows.end());
  }
}

std::string run_name(size_t i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04zu", i);
  return buf;
}

// Also returns the overall statistics of every aggregated column, for the run's /summary.
std::map<std::string, Stats> write_run(hid_t parent, size_t index, const RunResult& run) {
  std::map<std::string, Stats> overall;
  h5::Handle group = h5::create_group(parent, run_name(index));
  h5::write_attr(group.get(), "spec", run.spec);
  h5::write_attr(group.get(), "resolved", run.resolved);
  h5::write_attr(group.get(), "stages", run.stages);
  h5::write_attr(group.get(), "seed", static_cast<int64_t>(run.seed));
  std::string idle;  // the stages that never acted, `+`-joined (sim/stage_activity.h)
  for (const std::string& name : idle_stages(run)) idle += (idle.empty() ? "" : "+") + name;
  h5::write_attr(group.get(), "idle_stages", idle);
  {
    std::vector<CounterRow> rows;
    for (const auto& [name, value] : run.counters) rows.push_back({name, value});
    h5::Handle counters = h5::create_group(group.get(), "counters");
    write_columns<CounterRow>(counters.get(), rows, kCounterColumns);
  }
  {
    h5::Handle steps = h5::create_group(group.get(), "steps");
    write_columns<StepRecord>(steps.get(), run.steps, kStepColumns);
  }
  {
    h5::Handle kv = h5::create_group(group.get(), "kv");
    write_columns<KvRecord>(kv.get(), run.kv, kKvColumns);
  }
  {
    std::vector<AggregateRow> rows;
    aggregate_records<StepRecord>(rows, kStepColumns, run.steps, &StepRecord::q_head, "steps",
                                  overall);
    aggregate_records<KvRecord>(rows, kKvColumns, run.kv, &KvRecord::kv_head, "kv", overall);
    h5::Handle aggregates = h5::create_group(group.get(), "aggregates");
    write_columns<AggregateRow>(aggregates.get(), rows, kAggregateColumns);
  }
  return overall;
}

// Throws FormatError at the first NaN or infinity of a record column: the engine's metrics are
// finite for every trace the reader accepts (TraceMeta::value_bound), so a non-finite value is
// a defect that must not reach a results file as a number.
template <typename Record>
void check_finite(const RunResult& run, size_t index, const char* table, Columns<Record> columns,
                  const std::vector<Record>& records) {
  for (size_t row = 0; row < records.size(); ++row) {
    for (const Column<Record>& c : columns) {
      const double x = numeric_cell(c, records[row]);
      if (!std::isfinite(x)) {
        throw FormatError("results: run " + std::to_string(index) + " ('" + run.spec +
                          "'): column '" + table + "/" + c.name + "' is " + std::to_string(x) +
                          " at row " + std::to_string(row) + "; no results file written");
      }
    }
  }
}

ColumnDoc summary_column_doc(const SummaryColumn& c) {
  return {c.name, ColumnType::kFloat64, c.unit, c.doc};
}

}  // namespace

void write_results(const std::string& path, const TraceMeta& meta, const ResultsContext& context,
                   const std::vector<RunResult>& runs, const ResultsExtension& extend) {
  for (size_t i = 0; i < runs.size(); ++i) {
    check_finite<StepRecord>(runs[i], i, "steps", kStepColumns, runs[i].steps);
    check_finite<KvRecord>(runs[i], i, "kv", kKvColumns, runs[i].kv);
  }
  atomic_write(path, [&](const std::string& tmp) {
    h5::Handle file = h5::create_file(tmp);
    const hid_t root = file.get();
    h5::write_attr(root, "format", std::string(kResultsFormatName));
    h5::write_attr(root, "version", kResultsFormatVersion);
    h5::write_attr(root, "kvsim_version", context.kvsim_version);
    h5::write_attr(root, "trace_path", context.trace_path);
    h5::write_attr(root, "trace_id", meta.trace_id);
    h5::write_attr(root, "model_name", meta.model_name);
    h5::write_attr(root, "num_runs", static_cast<int64_t>(runs.size()));
    h5::write_attr(root, "measured_steps", context.measured_steps);

    if (!context.sequences.empty()) {
      std::vector<SequenceRow> rows;
      for (size_t i = 0; i < context.sequences.size(); ++i) {
        const SequenceInfo& info = context.sequences[i];
        rows.push_back({0, static_cast<int32_t>(i), static_cast<int32_t>(info.prompt_len),
                        static_cast<int32_t>(info.num_tokens)});
      }
      h5::Handle seqs = h5::create_group(root, "sequences");
      write_columns(seqs.get(), rows, Columns<SequenceRow>(kSequenceColumns).subspan(1));
    }
    h5::Handle runs_group = h5::create_group(root, "runs");
    std::vector<SummaryKeys> keys;
    std::vector<std::vector<double>> columns(summary_columns().size());
    for (size_t i = 0; i < runs.size(); ++i) {
      std::map<std::string, Stats> overall = write_run(runs_group.get(), i, runs[i]);
      keys.push_back({static_cast<int32_t>(i), runs[i].spec, runs[i].resolved});
      const RunSummary s = summarize(runs[i], std::move(overall));
      for (size_t c = 0; c < columns.size(); ++c) columns[c].push_back(s.values[c]);
    }
    h5::Handle summary = h5::create_group(root, "summary");
    write_columns<SummaryKeys>(summary.get(), keys, kSummaryKeyColumns);
    std::vector<std::string> names;
    for (size_t c = 0; c < columns.size(); ++c) {
      const SummaryColumn& column = summary_columns()[c];
      for (size_t i = 0; i < columns[c].size(); ++i) {
        if (!std::isfinite(columns[c][i])) {
          throw FormatError("results: run " + std::to_string(i) + " ('" + runs[i].spec +
                            "'): /summary column '" + column.name + "' is " +
                            std::to_string(columns[c][i]) + "; no results file written");
        }
      }
      write_column(summary.get(), summary_column_doc(column), columns[c]);
      if (!column.label.empty()) {  // the header tables show (CLI, kvsim_tables.py)
        h5::Handle dataset = h5::open_dataset(summary.get(), column.name, "results");
        h5::write_attr(dataset.get(), "label", column.label);
      }
      names.push_back(column.name);
    }
    append_column_names(summary.get(), names);
    if (extend) extend(root);
    summary.reset();
    runs_group.reset();
    h5::close_file(file, tmp);
  });
}

std::vector<TableDoc> results_tables() {
  std::vector<TableDoc> tables;
  tables.push_back({"sequences", "/sequences", "one row per sequence of the trace",
                    column_docs<SequenceRow>(Columns<SequenceRow>(kSequenceColumns).subspan(1))});
  TableDoc summary{"summary", "/summary", "one row per policy run",
                   column_docs<SummaryKeys>(kSummaryKeyColumns)};
  for (const auto& c : summary_columns()) summary.columns.push_back(summary_column_doc(c));
  tables.push_back(summary);
  tables.push_back({"steps", "/runs/NNNN/steps",
                    "fidelity, one row per (sequence, layer, query head, measured step)",
                    column_docs<StepRecord>(kStepColumns)});
  tables.push_back({"kv", "/runs/NNNN/kv",
                    "memory and reconstruction, one row per (sequence, layer, kv head, measured "
                    "step)",
                    column_docs<KvRecord>(kKvColumns)});
  tables.push_back({"counters", "/runs/NNNN/counters",
                    "policy-specific counters, one row per counter",
                    column_docs<CounterRow>(kCounterColumns)});
  tables.push_back({"aggregates", "/runs/NNNN/aggregates",
                    "statistics, one row per (metric, scope, layer, head)",
                    column_docs<AggregateRow>(kAggregateColumns)});
  return tables;
}

}  // namespace kvsim
