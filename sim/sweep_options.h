// The options of `kvsim sweep` (see `kvsim sweep --help` and docs/cli.md).
#pragma once

#include <string>
#include <vector>

#include "sim/checkpoint.h"
#include "sim/sweep_spec.h"

namespace kvsim {
struct Sweep;
}

namespace kvsim::sweep_driver {

struct Options {
  std::string sweep_file, out, checkpoint_dir, config_file;
  std::vector<std::string> traces;
  std::string measure;         // --measure, replaces the file's `measure` ("" = the file's)
  std::vector<int> sequences;  // --sequences, replaces the file's `sequences` (empty = the file's)
  bool resume = false, dry_run = false, quiet = false, keep_checkpoint = false, help = false;
  bool progress = false;
  CheckpointSync sync = CheckpointSync::kBackground;
  int threads = 0, plan_ranks = 0;
  std::string device = "cpu";  // --device: cpu | cuda
  uint64_t max_configs = kDefaultMaxConfigs;
  std::string help_text;
};

// Parses argv (argv[0] is skipped) and a --config file; throws ConfigError
// (IoError for an unreadable --config file). With --help, only `help` and
// `help_text` are set.
Options parse_options(int argc, char** argv);

// Applies the options that replace the sweep file's settings (--measure, --sequences; the
// traces are replaced by resolve_sweep's `trace_override`).
void apply_overrides(const Options& options, SweepFile& file);

// Throws unless `opt.out` can be written and is none of the sweep's inputs (the
// sweep file, the --config file, the traces, the specs' calibration files):
// check_output_file (sim/output_check.h).
void check_sweep_output(const Options& opt, const Sweep& sweep);

}  // namespace kvsim::sweep_driver
