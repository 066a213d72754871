// The options of `kvsim sweep` (see `kvsim sweep --help` and docs/cli.md).
#pragma once

#include <string>
#include <vector>

#include "sim/checkpoint.h"
#include "sim/sweep_spec.h"

namespace kvsim::sweep_driver {

struct Options {
  std::string sweep_file, out, checkpoint_dir;
  std::vector<std::string> traces;
  std::string measure;         // --measure, replaces the file's `measure` ("" = the file's)
  std::vector<int> sequences;  // --sequences, replaces the file's `sequences` (empty = the file's)
  bool resume = false, dry_run = false, quiet = false, keep_checkpoint = false, help = false;
  bool progress = false;
  CheckpointSync sync = CheckpointSync::kBackground;
  int threads = 0, plan_ranks = 0;
  std::string help_text;
};

// Parses argv (argv[0] is skipped) and a --config file; throws ConfigError
// (IoError for an unreadable --config file). With --help, only `help` and
// `help_text` are set.
Options parse_options(int argc, char** argv);

// Applies the options that replace the sweep file's settings (--measure, --sequences; the
// traces are replaced by resolve_sweep's `trace_override`).
void apply_overrides(const Options& options, SweepFile& file);

// Throws IoError unless `out` can be written: its directory exists and is
// writable, and `out` is not a directory.
void check_output_path(const std::string& out);

}  // namespace kvsim::sweep_driver
