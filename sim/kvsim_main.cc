// The `kvsim` command line: replay, synth, inspect, policies.
#include <boost/program_options.hpp>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "gpu/device.h"
#include "gpu/gpu_backend.h"
#include "policies/policy.h"
#include "policies/skvq_calibration.h"
#include "sim/base/errors.h"
#include "sim/base/heap.h"
#include "sim/calibration.h"
#include "sim/engine.h"
#include "sim/inspect.h"
#include "sim/output_check.h"
#include "sim/progress.h"
#include "sim/results.h"
#include "sim/schema_doc.h"
#include "sim/skvq_calibration_io.h"
#include "sim/stage_activity.h"
#include "sim/summary_table.h"
#include "sim/sweep.h"
#include "trace/synth.h"

namespace po = boost::program_options;

namespace kvsim {
namespace {

constexpr const char* kVersion = "0.1.0";

const char* kUsage = R"(kvsim: replay KV-cache compression policies over recorded attention traces.

usage: kvsim <command> [options]     (kvsim <command> --help for its options)

commands:
  replay    replay one trace through one or more policy specs, write results.h5
  sweep     run a grid of policy specs over traces on MPI ranks, write results.h5
  synth     generate a deterministic synthetic trace
  inspect   print a trace's metadata and per-layer statistics
  calibrate compute and save SKVQ's channel reordering (and clip search) on held-out data
  policies  list every policy with its parameters and defaults
  schema    print the results file's tables and columns (--markdown)
  version   print the version
)";

// Parses the command's options from argv and, if given, a --config file
// (`key = value` lines; the command line wins).
po::variables_map parse(const std::string& command, po::options_description& desc, int argc,
                        char** argv, const po::positional_options_description* positional,
                        bool& help) {
  desc.add_options()("help,h", "show this help")("config", po::value<std::string>(),
                                                 "read options from a file of `key = value` lines");
  po::variables_map vm;
  po::command_line_parser parser(argc, argv);
  parser.options(desc);
  if (positional) parser.positional(*positional);
  try {
    const po::parsed_options parsed = parser.run();
    // Without a positional description Boost keeps bare words unnamed and store()
    // drops them: refuse them instead of ignoring them.
    for (const auto& option : parsed.options) {
      if (option.string_key.empty() && !option.value.empty()) {
        throw ConfigError("kvsim " + command + ": unexpected argument '" + option.value[0] +
                          "' (see kvsim " + command + " --help)");
      }
    }
    po::store(parsed, vm);
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::ifstream in(path);
      if (!in) throw IoError("cannot open config file '" + path + "'");
      po::store(po::parse_config_file(in, desc), vm);
    }
    help = vm.count("help") > 0;
    if (!help) po::notify(vm);
  } catch (const po::error& e) {
    throw ConfigError("kvsim " + command + ": " + e.what() + " (see kvsim " + command + " --help)");
  }
  return vm;
}

// A seed on the command line: decimal digits only, at most 2^64 - 1. (Boost parses
// "-1" into a uint64_t as 2^64 - 1 without complaint.)
uint64_t parse_seed(const std::string& text) {
  uint64_t seed = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seed);
  if (text.empty() || text[0] < '0' || text[0] > '9' || ec != std::errc() ||
      end != text.data() + text.size()) {
    throw ConfigError("--seed '" + text + "': expected an integer in [0, 2^64 - 1]");
  }
  return seed;
}

// The --config file, when given: an input that no output may replace.
std::vector<std::string> config_inputs(const po::variables_map& vm) {
  if (!vm.count("config")) return {};
  return {vm["config"].as<std::string>()};
}

// The backend of `--device cuda` for the process with index `local_rank` on its node: one GPU
// per rank, round robin over the node's GPUs. Throws BackendUnavailable without CUDA or a GPU.
std::unique_ptr<AttentionBackend> make_device_backend(const std::string& device, int local_rank) {
  KVSIM_CHECK(device == "cuda");
  gpu::require_cuda();
  return gpu::make_cuda_backend(local_rank % gpu::cuda_device_count());
}

int cmd_replay(int argc, char** argv) {
  po::options_description desc("kvsim replay options");
  desc.add_options()("trace,t", po::value<std::string>()->required(),
                     "trace file (HDF5, format v1 or v2)")(
      "policy,p", po::value<std::vector<std::string>>()->required()->composing(),
      "policy spec, repeatable: name:key=val,...[+name2:...]")(
      "out,o", po::value<std::string>()->required(), "results file to write (HDF5)")(
      "measure", po::value<std::string>()->default_value("auto"),
      "measured decode steps: auto | all | stride=N | last=N")(
      "sequences", po::value<std::vector<int>>()->multitoken(), "sequence indices (default all)")(
      "seed", po::value<std::string>()->default_value("0"),
      "seed for randomised policies, in [0, 2^64 - 1]")(
      "threads", po::value<int>()->default_value(0), "worker threads (0 = all cores)")(
      "device", po::value<std::string>()->default_value("cpu"), "cpu | cuda")(
      "quiet,q", "no progress bar and no summary table");
  bool help = false;
  auto vm = parse("replay", desc, argc, argv, nullptr, help);
  if (help) {
    std::cout << desc
              << "\nexample:\n  kvsim replay -t trace.h5 -p full -p uniform:bits=2 "
                 "-p streamingllm:window=124 -o results.h5\n";
    return 0;
  }
  const std::string device = vm["device"].as<std::string>();
  if (device != "cpu" && device != "cuda") {
    throw ConfigError("unknown --device '" + device + "' (valid: cpu, cuda)");
  }

  std::vector<PolicySpec> specs;
  for (const auto& text : vm["policy"].as<std::vector<std::string>>()) {
    specs.push_back(PolicySpec::parse(text));
  }
  ReplayOptions options;
  options.measure = MeasureRule::parse(vm["measure"].as<std::string>());
  options.seed = parse_seed(vm["seed"].as<std::string>());
  options.threads = vm["threads"].as<int>();
  if (options.threads < 0) throw ConfigError("--threads must be >= 0");
  if (vm.count("sequences")) options.sequences = vm["sequences"].as<std::vector<int>>();
  const bool quiet = vm.count("quiet") > 0;
  std::unique_ptr<AttentionBackend> backend;
  if (device == "cuda") {  // before any file is read: a missing GPU is the first error
    backend = make_device_backend(device, 0);
    options.backend = backend.get();
  }

  const std::string trace_path = vm["trace"].as<std::string>();
  const std::string out = vm["out"].as<std::string>();
  std::vector<std::string> inputs = config_inputs(vm);
  inputs.push_back(trace_path);
  for (const auto& s : specs) {
    for (const auto& file : spec_input_files(s)) inputs.push_back(file);
  }
  check_output_file(out, inputs, "results");
  TraceReader trace(trace_path);
  for (const auto& s : specs) s.check_against(trace.meta());  // before any work
  options.check_values = true;  // every value, before any unit starts (one read per layer)

  ProgressBar bar("replay", !quiet && progress_bar_wanted());
  options.progress = [&](size_t done, size_t total) { bar.update(done, total); };
  const auto runs = replay(trace, specs, options);
  bar.finish();

  ResultsContext context{trace_path, kVersion, options.measure.describe(), {}};
  for (int s = 0; s < trace.num_sequences(); ++s) context.sequences.push_back(trace.sequence(s));
  write_results(out, trace.meta(), context, runs);

  if (!quiet) {
    std::cout << "\nteacher-forced replay of " << trace_path << " (" << trace.meta().model_name
              << "), measured steps: " << options.measure.describe() << "\n\n";
    TextColumn run{"run", {}}, policy{"policy", {}};  // run: its /runs/NNNN in the results
    for (size_t i = 0; i < runs.size(); ++i) {
      run.cells.push_back(std::to_string(i));
      policy.cells.push_back(runs[i].spec);
    }
    print_summary_table(std::cout, {run, policy}, runs);
    std::cout << "\nresults: " << out << "\n";
  }
  print_idle_stage_warnings(std::cerr, runs);
  return 0;
}

std::vector<int> parse_int_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stoi(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw ConfigError("not an integer list: '" + text + "'");
    }
  }
  return out;
}

int cmd_synth(int argc, char** argv) {
  po::options_description desc("kvsim synth options");
  desc.add_options()("out,o", po::value<std::string>()->required(), "trace file to write")(
      "preset", po::value<std::string>()->default_value("default"), "default | tiny | bench")(
      "seed", po::value<std::string>(), "random seed, in [0, 2^64 - 1]")(
      "sequences", po::value<int>(), "number of sequences")(
      "layers", po::value<int>(), "model layers")("keep-layers", po::value<std::string>(),
                                                  "store only these layers, e.g. 0,4,5,7")(
      "q-heads", po::value<int>(), "query heads")("kv-heads", po::value<int>(), "kv heads")(
      "head-dim", po::value<int>(), "head dimension")("tokens", po::value<int>(),
                                                      "tokens per sequence (prompt + decode)")(
      "prompt-len", po::value<int>(), "prompt tokens")("outliers", po::value<int>(),
                                                       "outlier key channels per kv head")(
      "sinks", po::value<int>(), "attention-sink tokens")("sliding-window", po::value<int>(),
                                                          "window of local layers (0 = none)")(
      "sliding-every", po::value<int>(), "layer l is global iff l % N == N-1 (0 = all local)")(
      "dtype", po::value<std::string>(), "float16 | bfloat16 | float32")("gzip", po::value<int>(),
                                                                         "deflate level 0..9");
  bool help = false;
  auto vm = parse("synth", desc, argc, argv, nullptr, help);
  if (help) {
    std::cout << desc;
    return 0;
  }
  SynthConfig c = synth_preset(vm["preset"].as<std::string>());
  if (vm.count("seed")) c.seed = parse_seed(vm["seed"].as<std::string>());
  auto set_int = [&](const char* key, int& field) {
    if (vm.count(key)) field = vm[key].as<int>();
  };
  set_int("sequences", c.sequences);
  set_int("layers", c.model_layers);
  set_int("q-heads", c.q_heads);
  set_int("kv-heads", c.kv_heads);
  set_int("head-dim", c.head_dim);
  set_int("tokens", c.tokens);
  set_int("prompt-len", c.prompt_len);
  set_int("outliers", c.outlier_channels);
  set_int("sinks", c.sinks);
  set_int("sliding-window", c.sliding_window);
  set_int("sliding-every", c.sliding_every);
  set_int("gzip", c.gzip_level);
  if (vm.count("keep-layers")) c.keep_layers = parse_int_list(vm["keep-layers"].as<std::string>());
  if (vm.count("dtype")) c.dtype = parse_dtype(vm["dtype"].as<std::string>());
  c.validate();
  const std::string out = vm["out"].as<std::string>();
  check_output_file(out, config_inputs(vm), "trace");
  write_synth_trace(out, c);
  std::cout << "wrote " << out << ": " << c.sequences << " sequence(s), "
            << synth_meta(c).num_layers() << " layers, " << c.q_heads << "/" << c.kv_heads
            << " heads, d=" << c.head_dim << ", " << c.tokens << " tokens (prompt " << c.prompt_len
            << ")\n";
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  po::options_description desc("kvsim inspect options");
  desc.add_options()("trace,t", po::value<std::string>()->required(), "trace file")(
      "sequence", po::value<int>()->default_value(0), "sequence to compute statistics on")(
      "sinks", po::value<int>()->default_value(4), "leading tokens counted as sinks")(
      "check", "also read every value (NaN/Inf and truncation check)")(
      "rope", "also check the pre-RoPE mode: un-rotate and re-rotate every key (docs/cli.md)");
  po::positional_options_description pos;
  pos.add("trace", 1);
  bool help = false;
  auto vm = parse("inspect", desc, argc, argv, &pos, help);
  if (help) {
    std::cout << desc;
    return 0;
  }
  TraceReader trace(vm["trace"].as<std::string>());
  if (vm.count("check")) trace.validate_all_values();
  InspectOptions options;
  options.sequence = vm["sequence"].as<int>();
  options.sinks = vm["sinks"].as<int>();
  if (options.sinks < 0) throw ConfigError("--sinks must be >= 0");
  print_inspection(trace, options, std::cout);
  if (vm.count("rope")) print_rope_check(trace, options.sequence, std::cout);
  return 0;
}

int cmd_calibrate(int argc, char** argv) {
  po::options_description desc("kvsim calibrate options");
  desc.add_options()("trace,t", po::value<std::string>()->required(),
                     "calibration trace (held out from scoring)")(
      "sequences", po::value<std::vector<int>>()->multitoken(),
      "sequences to calibrate on (default all)")(
      "policy,p", po::value<std::string>()->default_value("skvq"),
      "the skvq spec whose calibration is wanted, e.g. 'skvq:group=32,clip_search=true'")(
      "out,o", po::value<std::string>()->required(), "calibration file to write (HDF5)");
  bool help = false;
  auto vm = parse("calibrate", desc, argc, argv, nullptr, help);
  if (help) {
    std::cout << desc
              << "\nexample:\n  kvsim calibrate -t calib_trace.h5 -p 'skvq:group=32' -o calib.h5\n"
                 "  kvsim replay -t eval_trace.h5 -p 'skvq:group=32,calib=calib.h5' -o r.h5\n";
    return 0;
  }
  const std::string spec = vm["policy"].as<std::string>();
  const auto colon = spec.find(':');
  if (spec.substr(0, colon) != "skvq") {
    throw ConfigError("kvsim calibrate: only 'skvq' has a calibration step, got '" + spec + "'");
  }
  const Params params = parse_skvq_params(colon == std::string::npos ? "" : spec.substr(colon + 1));
  const std::string out = vm["out"].as<std::string>();
  std::vector<std::string> inputs = config_inputs(vm);
  inputs.push_back(vm["trace"].as<std::string>());
  if (!params.get_string("calib").empty()) inputs.push_back(params.get_string("calib"));
  check_output_file(out, inputs, "calibration file");
  TraceReader trace(vm["trace"].as<std::string>());
  std::vector<int> sequences;
  if (vm.count("sequences")) sequences = vm["sequences"].as<std::vector<int>>();
  if (sequences.empty()) {
    for (int s = 0; s < trace.num_sequences(); ++s) sequences.push_back(s);
  }
  validate_sequences(trace, sequences);
  save_skvq_calibration(out, calibrate_skvq(trace, sequences, params));
  std::cout << "wrote " << out << ": SKVQ calibration of " << trace.meta().num_layers()
            << " layers from " << sequences.size() << " sequence(s) of " << trace.path() << "\n";
  return 0;
}

int cmd_policies(int argc, char** argv) {
  po::options_description desc("kvsim policies options");
  bool help = false;
  parse("policies", desc, argc, argv, nullptr, help);
  if (help) {
    std::cout << desc;
    return 0;
  }
  std::cout << "Policies (compose with '+', in the order evict, merge, quantize):\n";
  for (const PolicyInfo* info : PolicyRegistry::instance().all()) {
    std::cout << "\n"
              << info->name << "  [" << stage_kind_name(info->kind) << "]  " << info->summary
              << "\n";
    if (info->params.empty()) std::cout << "    (no parameters)\n";
    for (const auto& p : info->params) {
      std::cout << "    " << std::left << std::setw(12) << p.name << " default " << std::setw(8)
                << p.default_value << " " << p.describe_type() << ": " << p.help << "\n";
    }
  }
  return 0;
}

int cmd_schema(int argc, char** argv) {
  po::options_description desc("kvsim schema options");
  desc.add_options()("markdown",
                     "print every table of the results file as Markdown "
                     "(the blocks of docs/results-format.md)");
  bool help = false;
  auto vm = parse("schema", desc, argc, argv, nullptr, help);
  if (help || !vm.count("markdown")) {
    std::cout << desc;
    return help ? 0 : 2;
  }
  std::cout << schema_markdown();
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  // Subcommand options start after the command name.
  int sub_argc = argc - 1;
  char** sub_argv = argv + 1;
  if (command == "replay") return cmd_replay(sub_argc, sub_argv);
  if (command == "synth") return cmd_synth(sub_argc, sub_argv);
  if (command == "inspect") return cmd_inspect(sub_argc, sub_argv);
  if (command == "policies") return cmd_policies(sub_argc, sub_argv);
  if (command == "calibrate") return cmd_calibrate(sub_argc, sub_argv);
  if (command == "sweep") {
    SweepHooks hooks;
    hooks.make_backend = make_device_backend;
    return run_sweep_command(sub_argc, sub_argv, kVersion, hooks);
  }
  if (command == "schema") return cmd_schema(sub_argc, sub_argv);
  if (command == "version" || command == "--version") {
    if (argc > 2)
      throw ConfigError("kvsim version: unexpected argument '" + std::string(argv[2]) + "'");
    std::cout << "kvsim " << kVersion << " (CUDA kernels "
              << (gpu::cuda_compiled() ? "built" : "not built") << ")\n";
    return 0;
  }
  throw ConfigError(
      "unknown command '" + command +
      "' (valid: replay, sweep, synth, inspect, calibrate, policies, schema, version)");
}

}  // namespace
}  // namespace kvsim

int main(int argc, char** argv) {
  kvsim::keep_freed_memory();  // sim/base/heap.h
  try {
    return kvsim::run(argc, argv);
  } catch (const std::bad_alloc&) {
    std::cerr << "kvsim: error: out of memory (the input needs more memory than this machine "
                 "gives the process)\n";
    return 1;
  } catch (const kvsim::ConfigError& e) {
    std::cerr << "kvsim: error: " << e.what() << "\n";
    return 2;
  } catch (const kvsim::Error& e) {
    std::cerr << "kvsim: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "kvsim: unexpected error: " << e.what() << "\n";
    return 3;
  }
}
