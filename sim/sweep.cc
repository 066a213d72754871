#include "sim/sweep.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "sim/base/atomic_write.h"
#include "sim/base/errors.h"
#include "sim/base/h5.h"
#include "sim/results.h"

namespace kvsim {

namespace {

namespace fs = std::filesystem;

// --- YAML helpers ---------------------------------------------------------------
std::string where(const std::string& name, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return name;
  return name + ":" + std::to_string(mark.line + 1);
}

[[noreturn]] void fail(const std::string& name, const YAML::Node& node, const std::string& what) {
  throw ConfigError("sweep file " + where(name, node) + ": " + what);
}

std::string scalar(const std::string& name, const YAML::Node& node, const std::string& what) {
  if (!node.IsScalar()) fail(name, node, what + " must be a single value");
  return node.Scalar();
}

// Keys of a map in file order; duplicates are an error (yaml-cpp keeps both).
std::vector<std::string> map_keys(const std::string& name, const YAML::Node& map) {
  std::vector<std::string> keys;
  for (const auto& kv : map) {
    const std::string key = scalar(name, kv.first, "a key");
    if (std::find(keys.begin(), keys.end(), key) != keys.end()) {
      fail(name, kv.first, "key '" + key + "' appears twice");
    }
    keys.push_back(key);
  }
  return keys;
}

bool is_integer_text(const std::string& s) {
  const size_t start = !s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0;
  if (s.size() == start) return false;
  return std::all_of(s.begin() + static_cast<std::ptrdiff_t>(start), s.end(),
                     [](char c) { return c >= '0' && c <= '9'; });
}

double number(const std::string& name, const YAML::Node& node, const std::string& what) {
  const std::string s = scalar(name, node, what);
  try {
    size_t used = 0;
    const double v = std::stod(s, &used);
    if (used != s.size() || !std::isfinite(v)) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    fail(name, node, what + " '" + s + "' is not a number");
  }
}

std::string format_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.12g", v);
  return buf;
}

// Values of one grid axis: a scalar, a list (items may be lists: "[0,1]"), or
// a range {from, to, step} / {from, to, factor}, inclusive of `to`.
std::vector<std::string> axis_values(const std::string& name, const std::string& key,
                                     const YAML::Node& node) {
  constexpr size_t kMaxValues = 100000;
  std::vector<std::string> out;
  if (node.IsScalar()) {
    out.push_back(node.Scalar());
  } else if (node.IsSequence()) {
    for (const auto& item : node) {
      if (item.IsScalar()) {
        out.push_back(item.Scalar());
      } else if (item.IsSequence()) {
        std::string list = "[";
        for (size_t i = 0; i < item.size(); ++i) {
          if (i) list += ',';
          list += scalar(name, item[i], "an item of a list value");
        }
        out.push_back(list + "]");
      } else {
        fail(name, item, "grid values of '" + key + "' must be scalars or lists");
      }
    }
  } else if (node.IsMap()) {
    const auto keys = map_keys(name, node);
    for (const auto& k : keys) {
      if (k != "from" && k != "to" && k != "step" && k != "factor") {
        fail(name, node,
             "range of '" + key + "' has unknown key '" + k + "' (valid: from, to, step | factor)");
      }
    }
    if (!node["from"] || !node["to"] || (!node["step"] == !node["factor"])) {
      fail(name, node, "range of '" + key + "' needs from, to and one of step or factor");
    }
    const double from = number(name, node["from"], "from");
    const double to = number(name, node["to"], "to");
    if (to < from) fail(name, node, "range of '" + key + "': to < from");
    if (node["step"]) {
      const double step = number(name, node["step"], "step");
      if (step <= 0) fail(name, node, "range of '" + key + "': step must be > 0");
      const bool ints = is_integer_text(node["from"].Scalar()) &&
                        is_integer_text(node["to"].Scalar()) &&
                        is_integer_text(node["step"].Scalar());
      const double count = std::floor((to - from) / step + 1e-9) + 1;
      if (count > kMaxValues) fail(name, node, "range of '" + key + "' has too many values");
      for (int64_t i = 0; i < static_cast<int64_t>(count); ++i) {
        if (ints) {
          out.push_back(std::to_string(std::llround(from) + i * std::llround(step)));
        } else {
          out.push_back(format_number(from + static_cast<double>(i) * step));
        }
      }
    } else {
      const double factor = number(name, node["factor"], "factor");
      if (factor <= 1 || from <= 0) {
        fail(name, node, "range of '" + key + "': factor must be > 1 and from > 0");
      }
      const bool ints =
          is_integer_text(node["from"].Scalar()) && is_integer_text(node["factor"].Scalar());
      double v = from;
      for (int i = 0; v <= to * (1 + 1e-12); ++i, v *= factor) {
        if (out.size() >= kMaxValues) fail(name, node, "range of '" + key + "' is too long");
        out.push_back(ints ? std::to_string(std::llround(v)) : format_number(v));
        (void)i;
      }
    }
  } else {
    fail(name, node, "grid axis '" + key + "' has no values");
  }
  if (out.empty()) fail(name, node, "grid axis '" + key + "' has no values");
  return out;
}

PolicyTemplate parse_policy(const std::string& name, const YAML::Node& node) {
  PolicyTemplate t;
  t.where = where(name, node);
  if (node.IsScalar()) {
    t.spec = node.Scalar();
    return t;
  }
  if (!node.IsMap()) fail(name, node, "a policy is a spec string or {spec: ..., grid: {...}}");
  for (const auto& key : map_keys(name, node)) {
    if (key != "spec" && key != "grid") {
      fail(name, node, "policy entry has unknown key '" + key + "' (valid: spec, grid)");
    }
  }
  if (!node["spec"]) fail(name, node, "policy entry has no 'spec'");
  t.spec = scalar(name, node["spec"], "spec");
  if (node["grid"]) {
    const YAML::Node grid = node["grid"];
    if (!grid.IsMap()) fail(name, grid, "grid must be a map of parameter: values");
    const auto keys = map_keys(name, grid);
    for (const auto& key : keys) t.grid.push_back({key, axis_values(name, key, grid[key])});
  }
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------
SweepFile SweepFile::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw IoError("cannot open sweep file '" + path + "': " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  const fs::path parent = fs::path(path).parent_path();
  SweepFile f = parse(text.str(), parent.string(), path);
  f.path = path;
  return f;
}

SweepFile SweepFile::parse(const std::string& yaml, const std::string& base_dir,
                           const std::string& name) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw ConfigError("sweep file " + name + ":" + std::to_string(e.mark.line + 1) +
                      ": not valid YAML: " + e.msg);
  }
  if (!root.IsMap()) {
    throw ConfigError("sweep file " + name + ": expected a map with traces, policies, ...");
  }
  SweepFile f;
  const std::vector<std::string> valid = {"traces", "trace",     "measure",
                                          "seed",   "sequences", "policies"};
  try {
    for (const auto& key : map_keys(name, root)) {
      if (std::find(valid.begin(), valid.end(), key) == valid.end()) {
        fail(
            name, root,
            "unknown key '" + key + "' (valid: traces, trace, measure, seed, sequences, policies)");
      }
    }
    auto add_trace = [&](const YAML::Node& n) {
      const std::string p = scalar(name, n, "a trace path");
      if (p.empty()) fail(name, n, "empty trace path");
      fs::path path(p);
      if (path.is_relative() && !base_dir.empty()) path = fs::path(base_dir) / path;
      f.traces.push_back(path.lexically_normal().string());
    };
    if (root["trace"] && root["traces"]) fail(name, root, "give either 'trace' or 'traces'");
    if (root["trace"]) add_trace(root["trace"]);
    if (root["traces"]) {
      const YAML::Node traces = root["traces"];
      if (traces.IsScalar()) {
        add_trace(traces);
      } else if (traces.IsSequence()) {
        for (const auto& n : traces) add_trace(n);
      } else {
        fail(name, traces, "traces must be a list of paths");
      }
    }
    if (root["measure"]) f.measure = scalar(name, root["measure"], "measure");
    if (root["seed"]) {
      const std::string s = scalar(name, root["seed"], "seed");
      if (!is_integer_text(s) || s[0] == '-') fail(name, root["seed"], "seed must be >= 0");
      try {
        f.seed = std::stoull(s);
      } catch (const std::exception&) {
        fail(name, root["seed"], "seed '" + s + "' is out of range");
      }
    }
    if (root["sequences"]) {
      const YAML::Node seqs = root["sequences"];
      if (!seqs.IsSequence()) fail(name, seqs, "sequences must be a list of indices");
      for (const auto& n : seqs) {
        const std::string s = scalar(name, n, "a sequence index");
        if (!is_integer_text(s)) fail(name, n, "sequence index '" + s + "' is not an integer");
        f.sequences.push_back(std::stoi(s));
      }
    }
    if (!root["policies"]) fail(name, root, "no 'policies' list");
    const YAML::Node policies = root["policies"];
    if (!policies.IsSequence()) fail(name, policies, "policies must be a list");
    for (const auto& n : policies) f.policies.push_back(parse_policy(name, n));
    if (f.policies.empty()) fail(name, policies, "policies is empty");
  } catch (const YAML::Exception& e) {
    throw ConfigError("sweep file " + name + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  return f;
}

namespace {

// A `{name}` in a spec: its position, length and name.
struct Placeholder {
  size_t at = 0, length = 0;
  std::string name;
};

std::vector<Placeholder> placeholders(const std::string& spec) {
  auto ident = [](char c, bool first) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
  };
  std::vector<Placeholder> out;
  for (size_t i = 0; i < spec.size(); ++i) {
    if (spec[i] != '{') continue;
    size_t j = i + 1;
    while (j < spec.size() && ident(spec[j], j == i + 1)) ++j;
    if (j > i + 1 && j < spec.size() && spec[j] == '}') {
      out.push_back({i, j + 1 - i, spec.substr(i + 1, j - i - 1)});
      i = j;
    }
  }
  return out;
}

}  // namespace

std::vector<SweepConfig> expand_grid(const std::vector<PolicyTemplate>& policies) {
  std::vector<SweepConfig> out;
  for (const PolicyTemplate& t : policies) {
    const std::vector<Placeholder> holes = placeholders(t.spec);
    std::set<std::string> used;
    for (const auto& h : holes) used.insert(h.name);
    for (const auto& name : used) {
      const bool in_grid = std::any_of(t.grid.begin(), t.grid.end(),
                                       [&](const GridAxis& a) { return a.name == name; });
      if (!in_grid) {
        throw ConfigError("sweep file " + t.where + ": spec '" + t.spec + "' uses {" + name +
                          "} but the grid has no '" + name + "'");
      }
    }
    for (const auto& axis : t.grid) {
      if (!used.count(axis.name)) {
        throw ConfigError("sweep file " + t.where + ": grid key '" + axis.name +
                          "' is not used in spec '" + t.spec + "' (write {" + axis.name + "})");
      }
      if (axis.values.empty()) {
        throw ConfigError("sweep file " + t.where + ": grid axis '" + axis.name +
                          "' has no values");
      }
    }
    if (t.spec.find('{') != std::string::npos && t.grid.empty()) {
      throw ConfigError("sweep file " + t.where + ": spec '" + t.spec + "' has a '{' but no grid");
    }
    // Odometer over the axes, the last one fastest.
    std::vector<size_t> at(t.grid.size(), 0);
    while (true) {
      std::string spec, origin = t.where;
      size_t last = 0;
      for (const auto& h : holes) {
        spec += t.spec.substr(last, h.at - last);
        for (size_t a = 0; a < t.grid.size(); ++a) {
          if (t.grid[a].name == h.name) spec += t.grid[a].values[at[a]];
        }
        last = h.at + h.length;
      }
      spec += t.spec.substr(last);
      for (size_t a = 0; a < t.grid.size(); ++a) {
        origin += " " + t.grid[a].name + "=" + t.grid[a].values[at[a]];
      }
      out.push_back({spec, origin});
      int a = static_cast<int>(t.grid.size()) - 1;
      for (; a >= 0; --a) {
        if (++at[a] < t.grid[a].values.size()) break;
        at[a] = 0;
      }
      if (a < 0) break;
    }
  }
  return out;
}

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
    if (group.empty()) return {{-1}, {}, true, {}};
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
    for (const auto& stage : pipeline.evicts) {
      if (const CacheBound bound = stage->max_cache_tokens(); bound.bounded()) {
        traits.cache_bounds.push_back(bound);
      }
    }
    return traits;
  } catch (...) {
    return {{-1}, {}, true, {}};  // e.g. a stage that needs prepared state: assume the most work
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
      int64_t n = present_tokens(window, t);
      for (const CacheBound& bound : traits.cache_bounds) n = std::min(n, bound.at(t, P));
      return n;
    };
    for (int64_t t : measured) measured_n += kept(t);
    // Measured steps: compressed attention (scores + weighted sum), exact scores
    // and K/V reconstruction error, all over the kept entries: the exact cache,
    // or what the evict stages declare they keep at most.
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

Sweep resolve_sweep(const SweepFile& file, const std::vector<std::string>& trace_override) {
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

  s.configs = expand_grid(file.policies);
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
BlockData load_block(const Sweep& sweep, const SweepBlock& block, double* io_seconds,
                     double* exact_seconds) {
  using clock = std::chrono::steady_clock;
  const TraceReader& trace = *sweep.traces[block.trace];
  const TraceMeta& meta = trace.meta();
  const SequenceInfo& info = trace.sequence(block.sequence);
  const auto& slots = sweep.groups[block.trace][block.group];
  BlockData data;
  const auto t0 = clock::now();
  for (int slot : slots) data.layers.push_back(trace.read_layer(block.sequence, slot));
  const auto t1 = clock::now();
  data.measured = sweep.measure.steps(info.prompt_len, info.num_tokens);
  for (const auto& layer : data.layers) {
    data.exact.push_back(compute_exact(meta, layer, data.measured));
  }
  const auto t2 = clock::now();
  if (io_seconds) *io_seconds += std::chrono::duration<double>(t1 - t0).count();
  if (exact_seconds) *exact_seconds += std::chrono::duration<double>(t2 - t1).count();
  return data;
}

RunResult run_unit(const Sweep& sweep, const SweepUnit& unit, const BlockData& data,
                   const std::vector<std::shared_ptr<const PolicyState>>& prepared,
                   PrefillAttentionCache* prefill_cache) {
  const TraceReader& trace = *sweep.traces[unit.key.trace];
  const TraceMeta& meta = trace.meta();
  const SequenceInfo& info = trace.sequence(unit.key.sequence);
  const auto& slots = sweep.groups[unit.key.trace][unit.key.group];
  const PolicySpec& spec = sweep.specs[unit.key.config];
  KVSIM_CHECK(slots.size() == data.layers.size() && slots.size() == data.exact.size());
  // The per-policy body of replay_unit(), unchanged.
  const auto start = std::chrono::steady_clock::now();
  RunResult merged;
  for (const auto& g : spec.layer_slot_groups(meta)) {
    if (std::find(slots.begin(), slots.end(), g[0]) == slots.end()) continue;
    std::vector<const LayerData*> layer_ptrs;
    std::vector<const ExactLayer*> exact_ptrs;
    for (int slot : g) {
      const auto it = std::find(slots.begin(), slots.end(), slot);
      KVSIM_CHECK_MSG(it != slots.end(), "layer group not inside the unit");
      layer_ptrs.push_back(&data.layers[it - slots.begin()]);
      exact_ptrs.push_back(&data.exact[it - slots.begin()]);
    }
    RunResult r = replay_shard(meta, unit.key.sequence, info.prompt_len, g, layer_ptrs, exact_ptrs,
                               spec, prepared, data.measured, sweep.seed, prefill_cache);
    merged.steps.insert(merged.steps.end(), r.steps.begin(), r.steps.end());
    merged.kv.insert(merged.kv.end(), r.kv.begin(), r.kv.end());
    for (const auto& [k, v] : r.counters) merged.counters[k] += v;
  }
  merged.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return merged;
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
