// The sweep file (YAML) and its grid expansion: SweepFile::load/parse,
// expand_grid (sim/sweep_spec.h, docs/sweeps.md).
#include "sim/sweep_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "sim/base/errors.h"

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

// Configurations of all grids: the product of each template's axis lengths,
// summed; saturates at UINT64_MAX.
uint64_t count_configs(const std::vector<PolicyTemplate>& policies) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  uint64_t total = 0;
  for (const PolicyTemplate& t : policies) {
    uint64_t product = 1;
    for (const auto& axis : t.grid) {
      const uint64_t n = axis.values.size();
      product = n != 0 && product > kMax / n ? kMax : product * n;
    }
    total = total > kMax - product ? kMax : total + product;
  }
  return total;
}

std::vector<SweepConfig> expand_grid(const std::vector<PolicyTemplate>& policies,
                                     uint64_t max_configs) {
  const uint64_t count = count_configs(policies);
  if (count > max_configs) {
    const std::string n =
        count == std::numeric_limits<uint64_t>::max() ? "more than 1.8e19" : std::to_string(count);
    throw ConfigError("the sweep's grids expand to " + n + " configurations, more than the limit " +
                      std::to_string(max_configs) +
                      " (check the grid axes; raise the limit with --max-configs N)");
  }
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

}  // namespace kvsim
