#include "policies/params.h"

#include <charconv>
#include <cmath>
#include <sstream>

#include "sim/base/errors.h"

namespace kvsim {

namespace {

constexpr const char* kReservedInStrings = ",+[]";

std::string format_double(double x) {
  std::ostringstream os;
  os.precision(12);
  os << x;
  return os.str();
}

// Splits on `sep` at bracket depth 0.
std::vector<std::string> split_top(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::string cur;
  int depth = 0;
  for (char ch : text) {
    if (ch == '[') ++depth;
    if (ch == ']') --depth;
    if (ch == sep && depth == 0) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(ch);
    }
  }
  out.push_back(cur);
  return out;
}

bool parse_int(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  const char* begin = s.data() + (s[0] == '+' ? 1 : 0);
  auto [ptr, ec] = std::from_chars(begin, s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

bool parse_double(const std::string& s, double& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && std::isfinite(out);
}

std::string valid_keys(const std::vector<ParamSpec>& specs) {
  std::string out;
  for (const auto& p : specs) append_joined(out, ", ", p.name);
  return out.empty() ? "(none: this policy takes no parameters)" : out;
}

ParamValue convert(const std::string& policy, const ParamSpec& spec, const std::string& raw) {
  auto bad = [&](const std::string& why) {
    return ConfigError("policy '" + policy + "': bad value '" + raw + "' for '" + spec.name +
                       "': " + why + " (expected " + spec.describe_type() + ")");
  };
  switch (spec.type) {
    case ParamType::kInt: {
      int64_t v;
      if (!parse_int(raw, v)) throw bad("not an integer");
      if (v < spec.min || v > spec.max) throw bad("out of range");
      return v;
    }
    case ParamType::kFloat: {
      double v;
      if (!parse_double(raw, v)) throw bad("not a finite number");
      if (v < spec.min || v > spec.max) throw bad("out of range");
      return v;
    }
    case ParamType::kBool:
      if (raw == "true" || raw == "1" || raw == "yes") return true;
      if (raw == "false" || raw == "0" || raw == "no") return false;
      throw bad("not a boolean");
    case ParamType::kString:
      // The spec's separators and brackets cannot appear in a value: the
      // canonical form must parse back to the same value (docs/policies.md).
      if (raw.find_first_of(kReservedInStrings) != std::string::npos) {
        throw bad("a string value may not contain any of " + std::string(kReservedInStrings));
      }
      return raw;
    case ParamType::kEnum:
      for (const auto& c : spec.choices) {
        if (c == raw) return raw;
      }
      throw bad("not one of the choices");
    case ParamType::kIntList: {
      if (raw.size() < 2 || raw.front() != '[' || raw.back() != ']') throw bad("not a [..] list");
      std::vector<int64_t> out;
      const std::string body = raw.substr(1, raw.size() - 2);
      if (!body.empty()) {
        for (const auto& item : split_top(body, ',')) {
          int64_t v;
          if (!parse_int(item, v)) throw bad("item '" + item + "' is not an integer");
          if (v < spec.min || v > spec.max) throw bad("item " + item + " out of range");
          out.push_back(v);
        }
      }
      return out;
    }
  }
  throw InternalError("unhandled parameter type");
}

}  // namespace

ParamSpec ParamSpec::Int(std::string name, int64_t def, int64_t min, int64_t max,
                         std::string help) {
  return {std::move(name),          ParamType::kInt,          std::to_string(def),
          static_cast<double>(min), static_cast<double>(max), {},
          std::move(help)};
}
ParamSpec ParamSpec::Float(std::string name, double def, double min, double max, std::string help) {
  return {std::move(name), ParamType::kFloat, format_double(def), min, max, {}, std::move(help)};
}
ParamSpec ParamSpec::Bool(std::string name, bool def, std::string help) {
  return {std::move(name), ParamType::kBool, def ? "true" : "false", 0, 1, {}, std::move(help)};
}
ParamSpec ParamSpec::String(std::string name, std::string def, std::string help) {
  return {std::move(name), ParamType::kString, std::move(def), 0, 0, {}, std::move(help)};
}
ParamSpec ParamSpec::Enum(std::string name, std::string def, std::vector<std::string> choices,
                          std::string help) {
  return {std::move(name),    ParamType::kEnum, std::move(def), 0, 0,
          std::move(choices), std::move(help)};
}
ParamSpec ParamSpec::IntList(std::string name, std::string def, int64_t min, int64_t max,
                             std::string help) {
  return {std::move(name),          ParamType::kIntList,      std::move(def),
          static_cast<double>(min), static_cast<double>(max), {},
          std::move(help)};
}

std::string ParamSpec::describe_type() const {
  switch (type) {
    case ParamType::kInt:
      return "int in [" + format_double(min) + ", " + format_double(max) + "]";
    case ParamType::kFloat:
      return "number in [" + format_double(min) + ", " + format_double(max) + "]";
    case ParamType::kBool:
      return "true or false";
    case ParamType::kString:
      return "string";
    case ParamType::kEnum: {
      std::string out = "one of ";
      for (size_t i = 0; i < choices.size(); ++i) out += (i ? "|" : "") + choices[i];
      return out;
    }
    case ParamType::kIntList:
      return "list [a,b,...] of ints in [" + format_double(min) + ", " + format_double(max) + "]";
  }
  return "?";
}

Params Params::parse(const std::string& policy, const std::vector<ParamSpec>& specs,
                     const std::string& text) {
  Params out;
  std::map<std::string, std::string> given;
  if (!text.empty()) {
    for (const auto& item : split_top(text, ',')) {
      const auto eq = item.find('=');
      if (eq == std::string::npos || eq == 0) {
        throw ConfigError("policy '" + policy + "': expected key=value, got '" + item +
                          "' (valid keys: " + valid_keys(specs) + ")");
      }
      const std::string key = item.substr(0, eq);
      bool known = false;
      for (const auto& s : specs) known = known || s.name == key;
      if (!known) {
        throw ConfigError("policy '" + policy + "': unknown parameter '" + key +
                          "' (valid keys: " + valid_keys(specs) + ")");
      }
      if (given.count(key)) {
        throw ConfigError("policy '" + policy + "': parameter '" + key + "' given twice");
      }
      given[key] = item.substr(eq + 1);
      out.given_.push_back(key);
    }
  }
  for (const auto& spec : specs) {
    auto it = given.find(spec.name);
    const std::string raw = it == given.end() ? spec.default_value : it->second;
    out.order_.push_back(spec.name);
    out.values_[spec.name] = convert(policy, spec, raw);
  }
  return out;
}

const ParamValue& Params::at(const std::string& key) const {
  auto it = values_.find(key);
  KVSIM_CHECK_MSG(it != values_.end(), "undeclared parameter '" << key << "'");
  return it->second;
}

int64_t Params::get_int(const std::string& key) const { return std::get<int64_t>(at(key)); }
double Params::get_float(const std::string& key) const { return std::get<double>(at(key)); }
bool Params::get_bool(const std::string& key) const { return std::get<bool>(at(key)); }
const std::string& Params::get_string(const std::string& key) const {
  return std::get<std::string>(at(key));
}
const std::vector<int64_t>& Params::get_int_list(const std::string& key) const {
  return std::get<std::vector<int64_t>>(at(key));
}

std::string format_param_value(const ParamValue& value) {
  struct Visitor {
    std::string operator()(int64_t v) const { return std::to_string(v); }
    // The shortest text that reads back as the same double: canonical forms
    // re-parse to the same value.
    std::string operator()(double v) const {
      char buf[32];
      const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
      return ec == std::errc() ? std::string(buf, end) : format_double(v);
    }
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(const std::string& v) const { return v; }
    std::string operator()(const std::vector<int64_t>& v) const {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) out += ',';
        out += std::to_string(v[i]);
      }
      out += ']';
      return out;
    }
  };
  return std::visit(Visitor{}, value);
}

std::string Params::canonical() const {
  std::string out;
  for (const auto& key : order_) {
    append_joined(out, ",", key + "=" + format_param_value(values_.at(key)));
  }
  return out;
}

}  // namespace kvsim
