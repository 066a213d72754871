// The sweep file (YAML): traces, the measure rule, a seed and a list of policy
// templates with grids, and the grid's expansion into configurations. Parsed
// and expanded by sim/sweep_spec.cc; resolved against the traces by
// resolve_sweep() (sim/sweep.h). The format: docs/sweeps.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvsim {

struct GridAxis {
  std::string name;
  std::vector<std::string> values;  // as they are substituted into the spec
};

// One entry of `policies:`: a spec, possibly with {placeholders} and a grid.
struct PolicyTemplate {
  std::string spec;
  std::vector<GridAxis> grid;  // in file order; the last axis varies fastest
  std::string where;           // "sweep.yaml:12" for messages
};

struct SweepFile {
  std::string path;                 // as given ("" when parsed from text)
  std::vector<std::string> traces;  // relative paths resolved against the file's folder
  std::string measure = "auto";
  uint64_t seed = 0;
  std::vector<int> sequences;  // empty = every sequence of each trace
  std::vector<PolicyTemplate> policies;

  // Throws IoError (unreadable file) or ConfigError (bad YAML or schema).
  static SweepFile load(const std::string& path);
  // `base_dir` resolves relative trace paths; `name` prefixes messages.
  static SweepFile parse(const std::string& yaml, const std::string& base_dir,
                         const std::string& name);
};

// One expanded configuration.
struct SweepConfig {
  std::string spec;    // the spec text after substitution
  std::string origin;  // "sweep.yaml:12 bits=2 group=32"
};

// Expands every template's grid (cartesian product, in file order). Throws
// ConfigError on a placeholder without grid values, a grid key the spec does
// not use, or an empty grid axis.
// The most configurations a sweep expands to unless the user raises it
// (`kvsim sweep --max-configs`): the grid is counted before it is expanded, so a
// mistyped axis cannot make every rank grow until it dies.
constexpr uint64_t kDefaultMaxConfigs = 10000;

// Throws ConfigError, with the count, when the grids hold more than `max_configs`
// configurations.
std::vector<SweepConfig> expand_grid(const std::vector<PolicyTemplate>& policies,
                                     uint64_t max_configs = kDefaultMaxConfigs);

}  // namespace kvsim
