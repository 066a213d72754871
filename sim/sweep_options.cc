#include "sim/sweep_options.h"

#include <boost/program_options.hpp>
#include <fstream>
#include <set>
#include <sstream>

#include "sim/base/errors.h"
#include "sim/engine.h"
#include "sim/output_check.h"
#include "sim/sweep.h"

namespace po = boost::program_options;

namespace kvsim::sweep_driver {

Options parse_options(int argc, char** argv) {
  po::options_description desc("kvsim sweep options");
  desc.add_options()("sweep,s", po::value<std::string>(), "sweep file (YAML; also positional)")(
      "out,o", po::value<std::string>(), "results file to write (HDF5), written atomically")(
      "resume", "reuse the units finished in the checkpoint directory; compute only the rest")(
      "checkpoint-dir", po::value<std::string>(), "checkpoint directory (default <out>.ckpt)")(
      "keep-checkpoint", "keep the checkpoint directory after the results are written")(
      "fsync", po::value<std::string>()->default_value("background"),
      "checkpoint fsync: background (a thread fsyncs each record right after it is written) "
      "| unit (each unit waits for its fsync)")(
      "threads", po::value<int>()->default_value(0),
      "worker threads per rank (0 = the node's cores / ranks on the node)")(
      "device", po::value<std::string>()->default_value("cpu"),
      "cpu | cuda: attention on one GPU per rank (the rank's index on its node modulo the "
      "node's GPUs; docs/gpu.md)")("trace,t", po::value<std::vector<std::string>>()->composing(),
                                   "trace file, repeatable: replaces the sweep file's traces")(
      "measure", po::value<std::string>(),
      "measured decode steps: auto | all | stride=N | last=N; replaces the sweep file's "
      "`measure` (as kvsim replay --measure)")(
      "sequences", po::value<std::vector<int>>()->multitoken()->composing(),
      "sequence indices of every trace; replace the sweep file's `sequences` (as kvsim replay "
      "--sequences; give the sweep file before this option)")(
      "dry-run", "print the expanded grid, the units and the plan; run nothing")(
      "max-configs", po::value<uint64_t>()->default_value(kDefaultMaxConfigs),
      "refuse a sweep whose grids expand to more configurations (counted before expanding)")(
      "ranks", po::value<int>(), "with --dry-run: plan for this many ranks (default: the job's)")(
      "quiet,q", "no progress bar and no summary table")(
      "progress",
      "draw the progress bar even when stderr is not a terminal (by default rank 0 draws it "
      "when its stderr is a terminal, directly or through mpirun's)")("help,h", "show this help")(
      "config", po::value<std::string>(), "read options from a file of `key = value` lines");
  po::positional_options_description positional;
  positional.add("sweep", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).positional(positional).run(), vm);
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::ifstream in(path);
      if (!in) throw IoError("cannot open config file '" + path + "'");
      po::store(po::parse_config_file(in, desc), vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw ConfigError(std::string("kvsim sweep: ") + e.what() + " (see kvsim sweep --help)");
  }
  Options o;
  o.help = vm.count("help") > 0;
  std::ostringstream help;
  help << "usage: kvsim sweep SWEEP.yaml --out results.h5 [options]\n"
          "       mpirun -np N kvsim sweep SWEEP.yaml --out results.h5 [--resume]\n\n"
       << desc
       << "\nThe sweep file format, sharding, checkpoints and cluster use: docs/sweeps.md\n";
  o.help_text = help.str();
  if (o.help) return o;
  if (!vm.count("sweep")) throw ConfigError("kvsim sweep: no sweep file given (see --help)");
  o.sweep_file = vm["sweep"].as<std::string>();
  if (vm.count("config")) o.config_file = vm["config"].as<std::string>();
  o.dry_run = vm.count("dry-run") > 0;
  if (vm.count("out")) o.out = vm["out"].as<std::string>();
  if (o.out.empty() && !o.dry_run) throw ConfigError("kvsim sweep: --out is required");
  o.checkpoint_dir = vm.count("checkpoint-dir") ? vm["checkpoint-dir"].as<std::string>()
                                                : (o.out.empty() ? "" : o.out + ".ckpt");
  if (vm.count("trace")) o.traces = vm["trace"].as<std::vector<std::string>>();
  if (vm.count("measure")) {
    o.measure = vm["measure"].as<std::string>();
    try {
      (void)MeasureRule::parse(o.measure);
    } catch (const ConfigError& e) {
      throw ConfigError(std::string("kvsim sweep: --measure: ") + e.what());
    }
  }
  if (vm.count("sequences")) {
    o.sequences = vm["sequences"].as<std::vector<int>>();
    if (std::set<int>(o.sequences.begin(), o.sequences.end()).size() != o.sequences.size()) {
      throw ConfigError("kvsim sweep: --sequences lists an index twice");
    }
  }
  o.resume = vm.count("resume") > 0;
  o.quiet = vm.count("quiet") > 0;
  o.progress = vm.count("progress") > 0;
  o.keep_checkpoint = vm.count("keep-checkpoint") > 0;
  const std::string sync = vm["fsync"].as<std::string>();
  if (sync == "unit") {
    o.sync = CheckpointSync::kEachRecord;
  } else if (sync != "background") {
    throw ConfigError("--fsync '" + sync + "': expected background or unit");
  }
  o.max_configs = vm["max-configs"].as<uint64_t>();
  o.threads = vm["threads"].as<int>();
  if (o.threads < 0) throw ConfigError("--threads must be >= 0");
  o.device = vm["device"].as<std::string>();
  if (o.device != "cpu" && o.device != "cuda") {
    throw ConfigError("unknown --device '" + o.device + "' (valid: cpu, cuda)");
  }
  if (vm.count("ranks")) {
    if (!o.dry_run) throw ConfigError("--ranks only applies with --dry-run");
    o.plan_ranks = vm["ranks"].as<int>();
    if (o.plan_ranks < 1) throw ConfigError("--ranks must be >= 1");
  }
  return o;
}

void apply_overrides(const Options& options, SweepFile& file) {
  if (!options.measure.empty()) file.measure = options.measure;
  if (!options.sequences.empty()) file.sequences = options.sequences;
}

void check_sweep_output(const Options& opt, const Sweep& sweep) {
  std::vector<std::string> inputs = sweep.trace_paths;
  inputs.push_back(opt.sweep_file);
  if (!opt.config_file.empty()) inputs.push_back(opt.config_file);
  for (const auto& spec : sweep.specs) {
    for (const auto& file : spec_input_files(spec)) inputs.push_back(file);
  }
  check_output_file(opt.out, inputs, "results");
}

}  // namespace kvsim::sweep_driver
