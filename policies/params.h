// Typed policy parameters: declared once per policy, parsed from `key=val`
// strings, validated with messages that name the valid keys and ranges.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace kvsim {

enum class ParamType { kInt, kFloat, kBool, kString, kEnum, kIntList };

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::kInt;
  std::string default_value;         // in spec syntax, e.g. "32", "0.92", "token", "[0,1]"
  double min = 0, max = 0;           // inclusive range for kInt/kFloat (and list items)
  std::vector<std::string> choices;  // for kEnum
  std::string help;

  static ParamSpec Int(std::string name, int64_t def, int64_t min, int64_t max, std::string help);
  static ParamSpec Float(std::string name, double def, double min, double max, std::string help);
  static ParamSpec Bool(std::string name, bool def, std::string help);
  static ParamSpec String(std::string name, std::string def, std::string help);
  static ParamSpec Enum(std::string name, std::string def, std::vector<std::string> choices,
                        std::string help);
  static ParamSpec IntList(std::string name, std::string def, int64_t min, int64_t max,
                           std::string help);
  std::string describe_type() const;  // e.g. "int in [1, 8]"
};

using ParamValue = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>>;

// Resolved parameters of one stage: every declared key has a value.
class Params {
 public:
  Params() = default;
  // Parses `key=val,...` against `specs`; throws ConfigError naming the policy.
  static Params parse(const std::string& policy, const std::vector<ParamSpec>& specs,
                      const std::string& text);

  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const std::vector<int64_t>& get_int_list(const std::string& key) const;
  // Canonical `key=val,...` in declaration order, defaults included.
  std::string canonical() const;
  // The keys the spec text set, in the order written (the others hold their defaults).
  const std::vector<std::string>& given() const { return given_; }

 private:
  const ParamValue& at(const std::string& key) const;
  std::vector<std::string> order_;
  std::vector<std::string> given_;
  std::map<std::string, ParamValue> values_;
};

std::string format_param_value(const ParamValue& value);

// Appends `item` to `out`, preceded by `separator` unless `out` is empty.
inline void append_joined(std::string& out, const char* separator, const std::string& item) {
  if (!out.empty()) out += separator;
  out += item;
}

}  // namespace kvsim
