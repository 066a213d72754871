// Replay from Python: kvsim._core.replay() runs the engine (the GIL released, progress
// reported to a Python callable) and returns a ReplayOutput, whose tables come out as
// NumPy columns in schema order (sim/records.h, summary_columns()) and whose save() is the
// CLI's results writer (sim/results.cc).
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <type_traits>

#include "sim/base/errors.h"
#include "sim/engine.h"
#include "sim/python/bindings.h"
#include "sim/records.h"
#include "sim/results.h"

#ifndef KVSIM_VERSION
#define KVSIM_VERSION "0.1.0"
#endif

namespace kvsim::python {
namespace {

// What one replay produced: enough to build the frames and to write the results file.
struct ReplayOutput {
  TraceMeta meta;
  ResultsContext context;
  std::vector<RunResult> runs;
};

// One record table of every run, concatenated in run order, as {column: array}; the first
// column is `run` (int64), then the schema's columns with their own types.
template <typename Row>
nb::dict record_columns(const std::vector<RunResult>& runs, std::vector<Row> RunResult::*table,
                        Columns<Row> columns) {
  std::vector<int64_t> run_index;
  for (size_t r = 0; r < runs.size(); ++r)
    run_index.insert(run_index.end(), (runs[r].*table).size(), r);
  nb::dict out;
  out["run"] = numpy_array(std::move(run_index));
  for (const Column<Row>& column : columns) {
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(std::declval<Row&>().*member)>;
          if constexpr (std::is_arithmetic_v<T>) {
            std::vector<T> values;
            for (const auto& run : runs) {
              for (const Row& row : run.*table) values.push_back(row.*member);
            }
            out[column.name] = numpy_array(std::move(values));
          } else {
            nb::list values;
            for (const auto& run : runs) {
              for (const Row& row : run.*table) values.append(row.*member);
            }
            out[column.name] = values;
          }
        },
        column.member);
  }
  return out;
}

// /summary: run (int64), spec, resolved, then summary_columns() (float64).
nb::dict summary(const ReplayOutput& out) {
  std::vector<int64_t> run;
  nb::list spec, resolved;
  const auto& columns = summary_columns();
  std::vector<std::vector<double>> values(columns.size());
  for (size_t r = 0; r < out.runs.size(); ++r) {
    run.push_back(static_cast<int64_t>(r));
    spec.append(out.runs[r].spec);
    resolved.append(out.runs[r].resolved);
    const RunSummary s = summarize(out.runs[r]);
    for (size_t c = 0; c < columns.size(); ++c) values[c].push_back(s.values[c]);
  }
  nb::dict d;
  d["run"] = numpy_array(std::move(run));
  d["spec"] = spec;
  d["resolved"] = resolved;
  for (size_t c = 0; c < columns.size(); ++c) {
    d[columns[c].name.c_str()] = numpy_array(std::move(values[c]));
  }
  return d;
}

// Counters in long form: run (int64), name, value (float64); names sorted within a run.
nb::dict counters(const ReplayOutput& out) {
  std::vector<int64_t> run;
  std::vector<double> value;
  nb::list name;
  for (size_t r = 0; r < out.runs.size(); ++r) {
    for (const auto& [key, v] : out.runs[r].counters) {
      run.push_back(static_cast<int64_t>(r));
      name.append(key);
      value.push_back(v);
    }
  }
  nb::dict d;
  d["run"] = numpy_array(std::move(run));
  d["name"] = name;
  d["value"] = numpy_array(std::move(value));
  return d;
}

template <typename Row>
nb::list column_list(Columns<Row> columns) {
  nb::list out;
  for (const auto& c : columns) {
    out.append(
        nb::make_tuple(c.name, column_type_name(c.type()), c.unit, c.summary != Summary::kNone));
  }
  return out;
}

// The tables' columns in schema order: {table: [(name, type, unit, summarised)]}.
nb::dict schema_columns() {
  nb::dict d;
  d["steps"] = column_list<StepRecord>(kStepColumns);
  d["kv"] = column_list<KvRecord>(kKvColumns);
  nb::list summary;
  summary.append(nb::make_tuple("run", "int64", "", false));
  summary.append(nb::make_tuple("spec", "string", "", false));
  summary.append(nb::make_tuple("resolved", "string", "", false));
  for (const auto& c : summary_columns())
    summary.append(nb::make_tuple(c.name, "float64", c.unit, false));
  d["summary"] = summary;
  return d;
}

ReplayOutput* run_replay(const TraceReader& trace, const std::vector<std::string>& spec_texts,
                         const std::string& measure, const std::vector<int>& sequences, int threads,
                         uint64_t seed, nb::object progress) {
  // The CLI's order of checks (kvsim replay): specs, options, the trace against the specs,
  // every value of the trace, then the replay.
  std::vector<PolicySpec> specs;
  for (const auto& text : spec_texts) specs.push_back(PolicySpec::parse(text));
  if (specs.empty()) throw ConfigError("no policy given");
  ReplayOptions options;
  options.measure = MeasureRule::parse(measure);
  options.seed = seed;
  if (threads < 0) throw ConfigError("threads must be >= 0");
  options.threads = threads;
  options.sequences = sequences;
  if (!progress.is_none()) {
    // Called from one engine thread at a time, with the GIL released by the caller.
    options.progress = [&progress](size_t done, size_t total) {
      nb::gil_scoped_acquire gil;
      progress(done, total);
    };
  }
  auto out = std::make_unique<ReplayOutput>();
  out->meta = trace.meta();
  out->context = ResultsContext{trace.path(), KVSIM_VERSION, options.measure.describe(), {}};
  for (int s = 0; s < trace.num_sequences(); ++s)
    out->context.sequences.push_back(trace.sequence(s));
  {
    nb::gil_scoped_release release;  // scorers written in Python take it back per call
    for (const auto& s : specs) s.check_against(trace.meta());
    // Every value checked first, by the replay's own read (each layer read once).
    options.check_values = true;
    out->runs = replay(trace, specs, options);
  }
  return out.release();
}

}  // namespace

void bind_replay(nb::module_& m) {
  nb::class_<ReplayOutput>(m, "ReplayOutput", "The runs of one replay, in the engine's memory.")
      .def_prop_ro("num_runs", [](const ReplayOutput& o) { return o.runs.size(); })
      .def_prop_ro("measured_steps", [](const ReplayOutput& o) { return o.context.measured_steps; })
      .def_prop_ro("trace_path", [](const ReplayOutput& o) { return o.context.trace_path; })
      .def_prop_ro("model_name", [](const ReplayOutput& o) { return o.meta.model_name; })
      .def("summary", &summary)
      .def("steps",
           [](const ReplayOutput& o) {
             return record_columns<StepRecord>(o.runs, &RunResult::steps, kStepColumns);
           })
      .def("kv",
           [](const ReplayOutput& o) {
             return record_columns<KvRecord>(o.runs, &RunResult::kv, kKvColumns);
           })
      .def("counters", &counters)
      .def(
          "save",
          [](const ReplayOutput& o, const std::string& path) {
            nb::gil_scoped_release release;
            write_results(path, o.meta, o.context, o.runs);
          },
          nb::arg("path"), "Writes the results file (docs/results-format.md), atomically.");
  m.def("replay", &run_replay, nb::arg("trace"), nb::arg("specs"), nb::arg("measure") = "auto",
        nb::arg("sequences") = std::vector<int>{}, nb::arg("threads") = 0, nb::arg("seed") = 0,
        nb::arg("progress") = nb::none(), nb::rv_policy::take_ownership);
  m.def("schema_columns", &schema_columns);
  m.attr("__version__") = KVSIM_VERSION;
}

}  // namespace kvsim::python
