#include "sim/results.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>

#include "sim/base/atomic_write.h"
#include "sim/base/errors.h"
#include "sim/base/h5.h"

namespace kvsim {

Stats compute_stats(std::vector<double>& v) {
  Stats s;
  s.count = static_cast<int64_t>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
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

RunSummary summarize(const RunResult& run) {
  RunSummary s;
  std::vector<double> rel;
  double cos = 0, mass = 0, kl = 0, kerr = 0, verr = 0;
  for (const auto& r : run.steps) {
    rel.push_back(r.rel_err);
    cos += r.cosine;
    mass += r.mass_retained;
    kl += r.kl;
  }
  for (const auto& k : run.kv) {
    kerr += k.key_err;
    verr += k.value_err;
    s.data_bits += static_cast<double>(k.data_bits);
    s.meta_bits += static_cast<double>(k.meta_bits);
    s.fp16_bits += static_cast<double>(k.fp16_bits);
    s.ideal_bits += k.ideal_bits;
  }
  const double ns = std::max<size_t>(run.steps.size(), 1), nk = std::max<size_t>(run.kv.size(), 1);
  const Stats st = compute_stats(rel);
  s.rel_err_mean = st.mean;
  s.rel_err_p95 = st.p95;
  s.cosine_mean = cos / ns;
  s.mass_retained_mean = mass / ns;
  s.kl_mean = kl / ns;
  s.key_err_mean = kerr / nk;
  s.value_err_mean = verr / nk;
  return s;
}

namespace {

std::string run_name(size_t i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04zu", i);
  return buf;
}

struct AggregateTable {
  std::vector<std::string> metric, scope;
  std::vector<int32_t> layer, head;
  std::vector<int64_t> count;
  std::vector<double> mean, p50, p95, max;
  void add(const std::string& m, const std::string& sc, int l, int h, std::vector<double>& vals) {
    const Stats s = compute_stats(vals);
    metric.push_back(m);
    scope.push_back(sc);
    layer.push_back(l);
    head.push_back(h);
    count.push_back(s.count);
    mean.push_back(s.mean);
    p50.push_back(s.p50);
    p95.push_back(s.p95);
    max.push_back(s.max);
  }
};

// Adds overall, per-layer and per-(layer, head) rows for one metric.
template <typename Record>
void aggregate_metric(AggregateTable& table, const std::string& name,
                      const std::vector<Record>& records, std::function<double(const Record&)> get,
                      std::function<int(const Record&)> head_of) {
  std::vector<double> all;
  std::map<int, std::vector<double>> per_layer;
  std::map<std::pair<int, int>, std::vector<double>> per_head;
  for (const auto& r : records) {
    const double x = get(r);
    all.push_back(x);
    per_layer[r.layer].push_back(x);
    per_head[{r.layer, head_of(r)}].push_back(x);
  }
  table.add(name, "overall", -1, -1, all);
  for (auto& [l, v] : per_layer) table.add(name, "layer", l, -1, v);
  for (auto& [lh, v] : per_head) table.add(name, "head", lh.first, lh.second, v);
}

void write_run(hid_t parent, size_t index, const RunResult& run) {
  h5::Handle group = h5::create_group(parent, run_name(index));
  h5::write_attr(group.get(), "spec", run.spec);
  h5::write_attr(group.get(), "resolved", run.resolved);
  h5::write_attr(group.get(), "stages", run.stages);
  h5::write_attr(group.get(), "seed", static_cast<int64_t>(run.seed));
  {
    h5::Handle counters = h5::create_group(group.get(), "counters");
    std::vector<std::string> names;
    std::vector<double> values;
    for (const auto& [k, v] : run.counters) names.push_back(k), values.push_back(v);
    h5::write_vector(counters.get(), "name", names);
    h5::write_vector(counters.get(), "value", values);
  }

  {
    h5::Handle steps = h5::create_group(group.get(), "steps");
    const size_t n = run.steps.size();
    std::vector<int32_t> seq(n), layer(n), qh(n), kvh(n), step(n);
    std::vector<float> rel(n), cos(n), mass(n), kl(n);
    for (size_t i = 0; i < n; ++i) {
      const auto& r = run.steps[i];
      seq[i] = r.sequence, layer[i] = r.layer, qh[i] = r.q_head, kvh[i] = r.kv_head;
      step[i] = r.step, rel[i] = r.rel_err, cos[i] = r.cosine, mass[i] = r.mass_retained;
      kl[i] = r.kl;
    }
    const hid_t g = steps.get();
    h5::write_vector(g, "sequence", seq);
    h5::write_vector(g, "layer", layer);
    h5::write_vector(g, "q_head", qh);
    h5::write_vector(g, "kv_head", kvh);
    h5::write_vector(g, "step", step);
    h5::write_vector(g, "rel_err", rel);
    h5::write_vector(g, "cosine", cos);
    h5::write_vector(g, "mass_retained", mass);
    h5::write_vector(g, "kl", kl);
  }
  {
    h5::Handle kvg = h5::create_group(group.get(), "kv");
    const size_t n = run.kv.size();
    std::vector<int32_t> seq(n), layer(n), kvh(n), step(n), kept(n);
    std::vector<int64_t> data(n), meta(n), fp16(n);
    std::vector<double> ideal(n);
    std::vector<float> kerr(n), verr(n);
    for (size_t i = 0; i < n; ++i) {
      const auto& r = run.kv[i];
      seq[i] = r.sequence, layer[i] = r.layer, kvh[i] = r.kv_head, step[i] = r.step;
      kept[i] = r.kept_tokens, data[i] = r.data_bits, meta[i] = r.meta_bits;
      fp16[i] = r.fp16_bits, kerr[i] = r.key_err, verr[i] = r.value_err;
      ideal[i] = r.ideal_bits;
    }
    const hid_t g = kvg.get();
    h5::write_vector(g, "sequence", seq);
    h5::write_vector(g, "layer", layer);
    h5::write_vector(g, "kv_head", kvh);
    h5::write_vector(g, "step", step);
    h5::write_vector(g, "kept_tokens", kept);
    h5::write_vector(g, "data_bits", data);
    h5::write_vector(g, "meta_bits", meta);
    h5::write_vector(g, "fp16_bits", fp16);
    h5::write_vector(g, "ideal_bits", ideal);
    h5::write_vector(g, "key_err", kerr);
    h5::write_vector(g, "value_err", verr);
  }
  {
    AggregateTable t;
    auto q_head = [](const StepRecord& r) { return static_cast<int>(r.q_head); };
    auto kv_head = [](const KvRecord& r) { return static_cast<int>(r.kv_head); };
    aggregate_metric<StepRecord>(
        t, "rel_err", run.steps, [](auto& r) { return r.rel_err; }, q_head);
    aggregate_metric<StepRecord>(
        t, "cosine", run.steps, [](auto& r) { return r.cosine; }, q_head);
    aggregate_metric<StepRecord>(
        t, "mass_retained", run.steps, [](auto& r) { return r.mass_retained; }, q_head);
    aggregate_metric<StepRecord>(
        t, "kl", run.steps, [](auto& r) { return r.kl; }, q_head);
    aggregate_metric<KvRecord>(
        t, "key_err", run.kv, [](auto& r) { return r.key_err; }, kv_head);
    aggregate_metric<KvRecord>(
        t, "value_err", run.kv, [](auto& r) { return r.value_err; }, kv_head);
    h5::Handle agg = h5::create_group(group.get(), "aggregates");
    const hid_t g = agg.get();
    h5::write_vector(g, "metric", t.metric);
    h5::write_vector(g, "scope", t.scope);
    h5::write_vector(g, "layer", t.layer);
    h5::write_vector(g, "head", t.head);
    h5::write_vector(g, "count", t.count);
    h5::write_vector(g, "mean", t.mean);
    h5::write_vector(g, "p50", t.p50);
    h5::write_vector(g, "p95", t.p95);
    h5::write_vector(g, "max", t.max);
  }
}

}  // namespace

void write_results(const std::string& path, const TraceMeta& meta, const ResultsContext& context,
                   const std::vector<RunResult>& runs) {
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
      h5::Handle seqs = h5::create_group(root, "sequences");
      std::vector<int32_t> index, prompt, tokens;
      for (size_t i = 0; i < context.sequences.size(); ++i) {
        index.push_back(static_cast<int32_t>(i));
        prompt.push_back(static_cast<int32_t>(context.sequences[i].prompt_len));
        tokens.push_back(static_cast<int32_t>(context.sequences[i].num_tokens));
      }
      h5::write_vector(seqs.get(), "sequence", index);
      h5::write_vector(seqs.get(), "prompt_len", prompt);
      h5::write_vector(seqs.get(), "num_tokens", tokens);
    }
    h5::Handle runs_group = h5::create_group(root, "runs");
    std::vector<int32_t> index;
    std::vector<std::string> spec, resolved;
    std::map<std::string, std::vector<double>> columns;
    for (size_t i = 0; i < runs.size(); ++i) {
      write_run(runs_group.get(), i, runs[i]);
      const RunSummary s = summarize(runs[i]);
      index.push_back(static_cast<int32_t>(i));
      spec.push_back(runs[i].spec);
      resolved.push_back(runs[i].resolved);
      columns["rel_err_mean"].push_back(s.rel_err_mean);
      columns["rel_err_p95"].push_back(s.rel_err_p95);
      columns["cosine_mean"].push_back(s.cosine_mean);
      columns["mass_retained_mean"].push_back(s.mass_retained_mean);
      columns["kl_mean"].push_back(s.kl_mean);
      columns["key_err_mean"].push_back(s.key_err_mean);
      columns["value_err_mean"].push_back(s.value_err_mean);
      columns["data_bits"].push_back(s.data_bits);
      columns["meta_bits"].push_back(s.meta_bits);
      columns["fp16_bits"].push_back(s.fp16_bits);
      columns["memory_ratio"].push_back(s.memory_ratio());
      columns["memory_ratio_ideal"].push_back(s.memory_ratio_ideal());
      columns["bits_per_element"].push_back(s.bits_per_element());
      columns["seconds"].push_back(runs[i].seconds);
    }
    h5::Handle summary = h5::create_group(root, "summary");
    h5::write_vector(summary.get(), "run", index);
    h5::write_vector(summary.get(), "spec", spec);
    h5::write_vector(summary.get(), "resolved", resolved);
    for (const auto& [name, values] : columns) h5::write_vector(summary.get(), name, values);
    h5::check(H5Fflush(root, H5F_SCOPE_GLOBAL), "cannot flush '" + tmp + "'");
  });
}

}  // namespace kvsim
