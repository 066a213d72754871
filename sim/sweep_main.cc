// `kvsim sweep`: the MPI driver of a policy sweep (docs/sweeps.md).
//
// Every rank parses the sweep file, opens the traces and checks every spec
// against every trace; the ranks split the NaN/Inf check of the trace values.
// Any failure before work starts is agreed on by all ranks, so each prints
// the message (prefixed "[rank N]") and exits non-zero. Rank 0 then reads the
// checkpoint directory, computes the plan (sim/sharding.h) and broadcasts it.
// Each rank runs its units block by block (a block's data read once), appends
// each finished unit to its own checkpoint file, and reports progress to rank
// 0 with non-blocking messages. Rank 0 gathers the partial results, checks
// them against an MPI_Reduce of unit counts and bits, assembles them in
// canonical unit order and writes the results file.
#include <mpi.h>
#include <omp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "sim/base/errors.h"
#include "sim/calibration.h"
#include "sim/checkpoint.h"
#include "sim/progress.h"
#include "sim/results.h"
#include "sim/sharding.h"
#include "sim/summary_table.h"
#include "sim/sweep.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace kvsim {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Seconds per estimated cost unit on the reference machine (2-core x86-64 dev
// box, one thread per rank), measured by experiments/sweeps/run_load_test.sh;
// only used to print time estimates.
constexpr double kSecondsPerCost = 2.5e-10;

enum Tag : int { kTagProgress = 11, kTagDone = 12, kTagGo = 13, kTagSize = 14, kTagData = 15 };
constexpr size_t kChunkBytes = size_t{1} << 28;

struct Failure {
  int code = 0;  // 0 = none; 1 input file, 2 configuration, 3 internal
  std::string message;
};

Failure classify(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const ConfigError& e) {
    return {2, e.what()};
  } catch (const Error& e) {
    return {1, e.what()};
  } catch (const std::exception& e) {
    return {3, std::string("unexpected error: ") + e.what()};
  } catch (...) {
    return {3, "unexpected error"};
  }
}

class Mpi {
 public:
  Mpi() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      owner_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_dup(MPI_COMM_WORLD, &progress);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
    MPI_Comm_size(local, &local_size);
    MPI_Comm_free(&local);
  }
  ~Mpi() {
    MPI_Comm_free(&progress);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owner_ && !finalized) MPI_Finalize();
  }
  Mpi(const Mpi&) = delete;
  Mpi& operator=(const Mpi&) = delete;

  std::string prefix() const { return size > 1 ? "[rank " + std::to_string(rank) + "] " : ""; }

  // Completes a request without spinning a core: ranks that wait (for rank 0
  // writing results, or for slower ranks) leave the CPU to those still working.
  static void wait(MPI_Request& request) {
    int done = 0;
    int nap_us = 50;
    while (true) {
      MPI_Test(&request, &done, MPI_STATUS_IGNORE);
      if (done) return;
      std::this_thread::sleep_for(std::chrono::microseconds(nap_us));
      nap_us = std::min(nap_us * 2, 5000);
    }
  }

  int rank = 0, size = 1, local_size = 1;
  MPI_Comm progress = MPI_COMM_NULL;

 private:
  bool owner_ = false;
};

// All ranks call this with their own outcome of a phase; every rank returns
// the failure of the lowest failing rank (its own when it failed itself).
Failure agree(const Mpi& mpi, const Failure& mine) {
  if (mpi.size == 1) return mine;
  int candidate = mine.code != 0 ? mpi.rank : mpi.size, first = mpi.size;
  MPI_Request request;
  MPI_Iallreduce(&candidate, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &request);
  Mpi::wait(request);
  if (first == mpi.size) return {};
  int code = mine.code;
  uint64_t length = mine.message.size();
  MPI_Ibcast(&code, 1, MPI_INT, first, MPI_COMM_WORLD, &request);
  Mpi::wait(request);
  MPI_Ibcast(&length, 1, MPI_UINT64_T, first, MPI_COMM_WORLD, &request);
  Mpi::wait(request);
  std::string message = mine.message;
  message.resize(length);
  MPI_Ibcast(message.data(), static_cast<int>(length), MPI_CHAR, first, MPI_COMM_WORLD, &request);
  Mpi::wait(request);
  if (mine.code != 0) return mine;
  return {code, message + " (reported by rank " + std::to_string(first) + ")"};
}

// Runs `f` on this rank and agrees on the outcome with every rank.
template <typename F>
Failure phase(const Mpi& mpi, F&& f) {
  Failure mine;
  try {
    f();
  } catch (...) {
    mine = classify(std::current_exception());
  }
  return agree(mpi, mine);
}

int report_failure(const Mpi& mpi, const Failure& f) {
  // One write, so that the lines of several ranks do not interleave.
  const std::string line =
      mpi.prefix() + "kvsim: " + (f.code == 3 ? "" : "error: ") + f.message + "\n";
  std::fflush(stderr);
  if (::write(STDERR_FILENO, line.data(), line.size()) < 0) std::perror("kvsim");
  return f.code;
}

// A failure after work started, when other ranks may be blocked in MPI calls:
// print it and take the whole job down with a non-zero status.
[[noreturn]] void abort_job(const Mpi& mpi, const Failure& f) {
  report_failure(mpi, f);
  if (mpi.size > 1) MPI_Abort(MPI_COMM_WORLD, f.code);
  std::_Exit(f.code);
}

template <typename T>
void bcast_vector(std::vector<T>& v, int root) {
  uint64_t n = v.size();
  MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
  v.resize(n);
  const size_t bytes = n * sizeof(T);
  for (size_t at = 0; at < bytes; at += kChunkBytes) {
    MPI_Bcast(reinterpret_cast<char*>(v.data()) + at,
              static_cast<int>(std::min(kChunkBytes, bytes - at)), MPI_BYTE, root, MPI_COMM_WORLD);
  }
}

std::string fmt(double x, int precision = 4) {
  std::ostringstream os;
  os << std::setprecision(precision) << x;
  return os.str();
}

std::string layers_text(const Sweep& sweep, int trace, int group) {
  std::string out = "{";
  const auto& slots = sweep.groups[trace][group];
  for (size_t i = 0; i < slots.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(sweep.traces[trace]->meta().layer_ids[slots[i]]);
  }
  return out + "}";
}

// --- progress ---------------------------------------------------------------
// Workers send their cumulative unit count to rank 0 without blocking (one
// message in flight at a time; counts are cumulative so a skipped one loses
// nothing), then a final count with kTagDone. Rank 0 polls between its own
// units and, when its own work is done, until every worker has finished.
class Progress {
 public:
  Progress(const Mpi& mpi, int64_t total, bool draw, int64_t resumed)
      : mpi_(mpi),
        total_(total),
        done_(mpi.size, 0),
        bar_(resumed > 0 ? "sweep (+" + std::to_string(resumed) + " resumed)" : "sweep", draw) {}

  // From the thread that called MPI_Init only.
  void local(int64_t count) {
    if (mpi_.rank == 0) {
      done_[0] = count;
      poll();
      return;
    }
    if (pending_) {
      int flag = 0;
      MPI_Test(&request_, &flag, MPI_STATUS_IGNORE);
      if (!flag) return;
      pending_ = false;
    }
    buffer_ = count;
    MPI_Isend(&buffer_, 1, MPI_INT64_T, 0, kTagProgress, mpi_.progress, &request_);
    pending_ = true;
  }

  void finish(int64_t count) {
    if (mpi_.rank != 0) {
      if (pending_) MPI_Wait(&request_, MPI_STATUS_IGNORE);
      pending_ = false;
      buffer_ = count;
      MPI_Send(&buffer_, 1, MPI_INT64_T, 0, kTagDone, mpi_.progress);
      return;
    }
    done_[0] = count;
    int nap_us = 100;
    while (finished_ < mpi_.size - 1) {
      if (!poll()) {
        std::this_thread::sleep_for(std::chrono::microseconds(nap_us));
        nap_us = std::min(nap_us * 2, 20000);
      } else {
        nap_us = 100;
      }
    }
    bar_.update(sum(), total_);
    bar_.finish();
  }

 private:
  int64_t sum() const {
    int64_t s = 0;
    for (int64_t d : done_) s += d;
    return s;
  }
  bool poll() {
    bool got = false;
    while (true) {
      int flag = 0;
      MPI_Status status;
      MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, mpi_.progress, &flag, &status);
      if (!flag) break;
      int64_t count = 0;
      MPI_Recv(&count, 1, MPI_INT64_T, status.MPI_SOURCE, status.MPI_TAG, mpi_.progress,
               MPI_STATUS_IGNORE);
      done_[status.MPI_SOURCE] = std::max(done_[status.MPI_SOURCE], count);
      if (status.MPI_TAG == kTagDone) ++finished_;
      got = true;
    }
    bar_.update(sum(), total_);
    return got;
  }

  const Mpi& mpi_;
  int64_t total_;
  std::vector<int64_t> done_;
  int finished_ = 0;
  ProgressBar bar_;
  MPI_Request request_ = MPI_REQUEST_NULL;
  bool pending_ = false;
  int64_t buffer_ = 0;
};

// --- options ------------------------------------------------------------------
struct Options {
  std::string sweep_file, out, checkpoint_dir;
  std::vector<std::string> traces;
  bool resume = false, dry_run = false, quiet = false, keep_checkpoint = false, help = false;
  bool progress = false;
  CheckpointSync sync = CheckpointSync::kBackground;
  int threads = 0, plan_ranks = 0;
  std::string help_text;
};

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
      "trace,t", po::value<std::vector<std::string>>()->composing(),
      "trace file, repeatable: replaces the sweep file's traces")(
      "dry-run", "print the expanded grid, the units and the plan; run nothing")(
      "ranks", po::value<int>(), "with --dry-run: plan for this many ranks (default: the job's)")(
      "quiet,q", "no progress bar and no summary table")(
      "progress",
      "draw the progress bar even when stderr is not a terminal (under mpirun the "
      "ranks' stderr is a pipe: pass this to see it)")("help,h", "show this help")(
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
  o.dry_run = vm.count("dry-run") > 0;
  if (vm.count("out")) o.out = vm["out"].as<std::string>();
  if (o.out.empty() && !o.dry_run) throw ConfigError("kvsim sweep: --out is required");
  o.checkpoint_dir = vm.count("checkpoint-dir") ? vm["checkpoint-dir"].as<std::string>()
                                                : (o.out.empty() ? "" : o.out + ".ckpt");
  if (vm.count("trace")) o.traces = vm["trace"].as<std::vector<std::string>>();
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
  o.threads = vm["threads"].as<int>();
  if (o.threads < 0) throw ConfigError("--threads must be >= 0");
  if (vm.count("ranks")) {
    if (!o.dry_run) throw ConfigError("--ranks only applies with --dry-run");
    o.plan_ranks = vm["ranks"].as<int>();
    if (o.plan_ranks < 1) throw ConfigError("--ranks must be >= 1");
  }
  return o;
}

void check_output_path(const std::string& out) {
  fs::path parent = fs::path(out).parent_path();
  if (parent.empty()) parent = ".";
  if (!fs::is_directory(parent)) {
    throw IoError("cannot write results '" + out + "': directory '" + parent.string() +
                  "' does not exist");
  }
  if (::access(parent.c_str(), W_OK) != 0) {
    throw IoError("cannot write results '" + out + "': directory '" + parent.string() +
                  "' is not writable");
  }
  if (fs::is_directory(out)) throw IoError("cannot write results '" + out + "': a directory");
}

ShardPlan make_plan(const Sweep& sweep, const std::vector<uint8_t>& done, int ranks,
                    std::vector<int64_t>& todo) {
  std::vector<ShardUnit> units;
  std::vector<double> overhead;
  for (const auto& b : sweep.blocks) overhead.push_back(b.overhead);
  todo.clear();
  for (size_t u = 0; u < sweep.units.size(); ++u) {
    if (done[u]) continue;
    todo.push_back(static_cast<int64_t>(u));
    units.push_back({sweep.units[u].block, sweep.units[u].cost});
  }
  return assign_units(units, overhead, ranks);
}

void print_dry_run(const Sweep& sweep, const ShardPlan& plan, const std::vector<int64_t>& todo,
                   int ranks, const CheckpointScan* scan, const std::string& ckpt_dir) {
  std::ostream& os = std::cout;
  os << "sweep file: " << sweep.file << "  (identity hash " << std::hex << sweep.hash << std::dec
     << ")\n";
  os << "measure: " << sweep.measure.describe() << ", seed: " << sweep.seed << "\n";
  os << "traces (" << sweep.traces.size() << "):\n";
  for (size_t t = 0; t < sweep.traces.size(); ++t) {
    const TraceMeta& meta = sweep.traces[t]->meta();
    os << "  [" << t << "] " << sweep.trace_paths[t] << "  (" << meta.model_name << ", trace_id "
       << meta.trace_id << ")\n      " << sweep.sequences[t].size() << " sequence(s), "
       << meta.num_layers() << " layers, layer groups:";
    for (size_t g = 0; g < sweep.groups[t].size(); ++g) {
      os << " " << layers_text(sweep, static_cast<int>(t), static_cast<int>(g));
    }
    os << "\n";
  }
  os << "configs (" << sweep.specs.size() << "):\n";
  for (size_t c = 0; c < sweep.specs.size(); ++c) {
    os << "  [" << std::setw(3) << c << "] " << std::left << std::setw(48) << sweep.configs[c].spec
       << std::right << "  " << sweep.configs[c].origin << "\n";
  }
  os << "runs: " << sweep.num_runs() << " (" << sweep.specs.size() << " configs x "
     << sweep.traces.size() << " trace(s))\n";
  os << "units: " << sweep.units.size() << " = " << sweep.blocks.size() << " data blocks x "
     << sweep.specs.size() << " configs\n";
  if (scan) {
    os << "checkpoint: " << ckpt_dir << ": " << scan->units.size() << " of " << sweep.units.size()
       << " units done (" << scan->files << " file(s), " << scan->torn_files
       << " torn tail(s) ignored";
    if (scan->foreign_records > 0) {
      os << "; " << scan->foreign_records << " record(s) of another sweep: --resume would refuse";
    }
    os << ")\n";
  }
  os << "plan for " << ranks << " rank(s): " << todo.size() << " units to compute, estimated cost "
     << fmt(plan.ideal * ranks, 4) << " (about " << fmt(plan.ideal * ranks * kSecondsPerCost, 3)
     << " s on one core of the reference machine)\n";
  os << "   rank   units  blocks   est. cost   est. s\n";
  const int shown = std::min(ranks, 32);
  for (int r = 0; r < shown; ++r) {
    os << "  " << std::setw(5) << r << " " << std::setw(7) << plan.units[r] << " " << std::setw(7)
       << plan.blocks[r] << " " << std::setw(11) << fmt(plan.load[r], 4) << " " << std::setw(8)
       << fmt(plan.load[r] * kSecondsPerCost, 3) << "\n";
  }
  if (shown < ranks) os << "  ... (" << ranks - shown << " more ranks)\n";
  os << "max/ideal load: " << fmt(plan.imbalance(), 4) << " (makespan about "
     << fmt(plan.max_load() * kSecondsPerCost, 3) << " s, ideal "
     << fmt(plan.ideal * kSecondsPerCost, 3)
     << " s), blocks split across ranks: " << plan.split_blocks << " of " << sweep.blocks.size()
     << "\n";
}

// --- the sweep ------------------------------------------------------------------
int sweep_command(const Mpi& mpi, int argc, char** argv, const std::string& version) {
  const auto wall_start = Clock::now();
  Options opt;
  SweepFile file;
  std::unique_ptr<Sweep> sweep_ptr;

  // 1. Options, sweep file, traces, specs: every rank, agreed.
  Failure f = phase(mpi, [&] {
    opt = parse_options(argc, argv);
    if (opt.help) return;
    file = SweepFile::load(opt.sweep_file);
    sweep_ptr = std::make_unique<Sweep>(resolve_sweep(file, opt.traces));
  });
  if (f.code) return report_failure(mpi, f);
  if (opt.help) {
    if (mpi.rank == 0) std::cout << opt.help_text;
    return 0;
  }
  Sweep& sweep = *sweep_ptr;
  const int64_t num_units = static_cast<int64_t>(sweep.units.size());

  // 2. Dry run: rank 0 prints the grid and the plan.
  if (opt.dry_run) {
    f = phase(mpi, [&] {
      if (mpi.rank != 0) return;
      std::vector<uint8_t> done(num_units, 0);
      std::unique_ptr<CheckpointScan> scan;
      if (opt.resume && !opt.checkpoint_dir.empty()) {
        scan = std::make_unique<CheckpointScan>(
            scan_checkpoints(opt.checkpoint_dir, sweep.hash, false));
        for (const auto& u : scan->units) {
          auto it = sweep.index.find(u.key);
          if (it != sweep.index.end()) done[it->second] = 1;
        }
      }
      const int ranks = opt.plan_ranks > 0 ? opt.plan_ranks : mpi.size;
      std::vector<int64_t> todo;
      const ShardPlan plan = make_plan(sweep, done, ranks, todo);
      print_dry_run(sweep, plan, todo, ranks, scan.get(), opt.checkpoint_dir);
    });
    return f.code ? report_failure(mpi, f) : 0;
  }

  // 3. Every trace value (NaN/Inf, truncation), the layers split across ranks.
  RankStats stats;
  f = phase(mpi, [&] {
    const auto t0 = Clock::now();
    const auto layers = value_check_layers(sweep);
    for (size_t i = mpi.rank; i < layers.size(); i += mpi.size) {
      (void)sweep.traces[layers[i].trace]->read_layer(layers[i].sequence, layers[i].slot);
    }
    stats.validate_seconds = since(t0);
  });
  if (f.code) return report_failure(mpi, f);

  // 4. Rank 0: output path, checkpoint directory, resume; then the plan.
  std::vector<uint8_t> done(num_units, 0);
  std::vector<RunResult> parts;  // rank 0: every unit's partial result
  std::vector<int> unit_rank;    // rank 0: who computed each unit (-1 = checkpoint)
  int64_t resumed = 0;
  int32_t attempt = 1;
  std::string resume_note;
  f = phase(mpi, [&] {
    if (mpi.rank != 0) return;
    check_output_path(opt.out);
    CheckpointScan scan = scan_checkpoints(opt.checkpoint_dir, sweep.hash, opt.resume);
    if (scan.foreign_records > 0) {
      std::ostringstream os;
      os << "checkpoint directory '" << opt.checkpoint_dir << "' holds " << scan.foreign_records
         << " unit(s) of a different sweep (sweep hash " << std::hex << scan.foreign_hash
         << ", this sweep " << sweep.hash << std::dec
         << "): the sweep file, traces, measure or seed changed; use another --checkpoint-dir "
            "or remove it";
      throw ConfigError(os.str());
    }
    if (!opt.resume && scan.records > 0) {
      throw ConfigError("checkpoint directory '" + opt.checkpoint_dir + "' holds " +
                        std::to_string(scan.units.size()) +
                        " finished unit(s) of this sweep: pass --resume to use them, or remove "
                        "the directory to start over");
    }
    parts.resize(num_units);
    unit_rank.assign(num_units, -2);
    for (auto& u : scan.units) {
      auto it = sweep.index.find(u.key);
      KVSIM_CHECK_MSG(it != sweep.index.end(), "checkpoint unit outside the sweep");
      done[it->second] = 1;
      parts[it->second] = std::move(u.part);
      unit_rank[it->second] = -1;
      ++resumed;
    }
    if (opt.resume) {
      resume_note =
          fs::exists(opt.checkpoint_dir)
              ? "resume: " + std::to_string(resumed) + " of " + std::to_string(num_units) +
                    " units from " + opt.checkpoint_dir + " (" + std::to_string(scan.files) +
                    " file(s), " + std::to_string(scan.torn_files) + " torn tail(s) ignored, " +
                    std::to_string(scan.duplicates) + " duplicate(s) ignored)"
              : "resume: no checkpoint at " + opt.checkpoint_dir + ", starting from scratch";
    }
    attempt = scan.last_attempt + 1;
    std::error_code ec;
    fs::create_directories(opt.checkpoint_dir, ec);
    if (ec) {
      throw IoError("cannot create checkpoint directory '" + opt.checkpoint_dir +
                    "': " + ec.message());
    }
  });
  if (f.code) return report_failure(mpi, f);
  bcast_vector(done, 0);
  MPI_Bcast(&attempt, 1, MPI_INT32_T, 0, MPI_COMM_WORLD);

  std::vector<int> rank_of;  // [todo]
  std::vector<int64_t> todo;
  std::vector<double> plan_load;
  f = phase(mpi, [&] {
    if (mpi.rank != 0) return;
    const ShardPlan plan = make_plan(sweep, done, mpi.size, todo);
    rank_of = plan.rank_of;
    plan_load = plan.load;
  });
  if (f.code) return report_failure(mpi, f);
  bcast_vector(todo, 0);
  bcast_vector(rank_of, 0);
  bcast_vector(plan_load, 0);
  stats.estimated_cost = plan_load[mpi.rank];

  // 5. This rank's checkpoint file.
  std::unique_ptr<CheckpointWriter> writer;
  f = phase(mpi, [&] {
    const std::string path =
        (fs::path(opt.checkpoint_dir) / checkpoint_file_name(attempt, mpi.rank)).string();
    writer = std::make_unique<CheckpointWriter>(path, sweep.hash, opt.sync);
  });
  if (f.code) return report_failure(mpi, f);

  int threads = opt.threads;
  if (threads <= 0) threads = std::max(1, omp_get_max_threads() / std::max(1, mpi.local_size));

  // 6. Work: this rank's units, block by block.
  std::map<int64_t, std::vector<int64_t>> my_blocks;  // block -> units, ascending
  for (size_t i = 0; i < todo.size(); ++i) {
    if (rank_of[i] == mpi.rank) my_blocks[sweep.units[todo[i]].block].push_back(todo[i]);
  }
  int64_t kill_after = -1;
  if (const char* k = std::getenv("KVSIM_SWEEP_TEST_KILL_AFTER")) {
    const char* r = std::getenv("KVSIM_SWEEP_TEST_KILL_RANK");
    if ((r ? std::atoi(r) : 0) == mpi.rank) kill_after = std::atoll(k);
  }
  const bool draw = mpi.rank == 0 && !opt.quiet && (opt.progress || stderr_is_terminal());
  Progress progress(mpi, static_cast<int64_t>(todo.size()), draw, resumed);
  std::vector<std::pair<int64_t, RunResult>> mine;
  std::map<int64_t, std::vector<std::shared_ptr<const PolicyState>>> prepared;  // by config
  std::mutex mutex;
  std::atomic<int64_t> finished{0};
  const auto work_start = Clock::now();
  for (const auto& [block_index, units] : my_blocks) {
    const SweepBlock& block = sweep.blocks[block_index];
    std::vector<RunResult> results(units.size());
    Failure failure;
    try {
      const BlockData data = load_block(sweep, block, &stats.io_seconds, &stats.exact_seconds);
      ++stats.blocks;
      std::vector<PrefillAttentionCache> prefill_caches(threads);  // one per thread
      for (int64_t u : units) {
        const int64_t key = static_cast<int64_t>(block.trace) * 1000003 + sweep.units[u].key.config;
        if (!prepared.count(key)) {
          prepared[key] =
              prepare_policy(sweep.specs[sweep.units[u].key.config], *sweep.traces[block.trace]);
        }
      }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
      for (size_t i = 0; i < units.size(); ++i) {
        {
          std::lock_guard lock(mutex);
          if (failure.code) continue;
        }
        try {
          const SweepUnit& unit = sweep.units[units[i]];
          const int64_t key = static_cast<int64_t>(block.trace) * 1000003 + unit.key.config;
          results[i] =
              run_unit(sweep, unit, data, prepared.at(key), &prefill_caches[omp_get_thread_num()]);
          const std::vector<char> record = writer->make_record(unit.key, results[i]);
          std::lock_guard lock(mutex);
          const auto t0 = Clock::now();
          writer->append_record(record);
          stats.checkpoint_seconds += since(t0);
          stats.unit_seconds += results[i].seconds;
          const int64_t count = ++finished;
          if (count == kill_after) ::kill(::getpid(), SIGKILL);  // test hook: die mid-sweep
          if (omp_get_thread_num() == 0) progress.local(count);
        } catch (...) {
          std::lock_guard lock(mutex);
          if (!failure.code) failure = classify(std::current_exception());
        }
      }
    } catch (...) {
      failure = classify(std::current_exception());
    }
    if (failure.code) abort_job(mpi, failure);
    for (size_t i = 0; i < units.size(); ++i) mine.emplace_back(units[i], std::move(results[i]));
    progress.local(finished.load());
  }
  try {
    writer->sync();
  } catch (...) {
    abort_job(mpi, classify(std::current_exception()));
  }
  stats.fsync_seconds = writer->fsync_seconds();
  writer.reset();
  stats.work_seconds = since(work_start);
  stats.units = static_cast<int64_t>(mine.size());
  progress.finish(finished.load());

  // 7. Consistency totals, then the gather of partial results onto rank 0.
  const auto gather_start = Clock::now();
  int64_t local_totals[3] = {static_cast<int64_t>(mine.size()), 0, 0};
  for (const auto& [u, part] : mine) {
    for (const auto& kv : part.kv) local_totals[1] += kv.data_bits + kv.meta_bits;
    local_totals[2] += static_cast<int64_t>(part.steps.size() + part.kv.size());
  }
  int64_t totals[3] = {0, 0, 0};
  MPI_Reduce(local_totals, totals, 3, MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);

  auto pack = [&](ByteWriter& w) {
    w.put(stats);
    w.put<uint64_t>(mine.size());
    for (const auto& [u, part] : mine) {
      w.put<int64_t>(u);
      serialize_unit(w, sweep.units[u].key, part);
    }
  };
  std::vector<RankStats> all_stats(mpi.size);
  auto unpack = [&](int rank, const std::vector<char>& bytes) {
    ByteReader in(bytes.data(), bytes.size());
    all_stats[rank] = in.get<RankStats>();
    const uint64_t n = in.get<uint64_t>();
    for (uint64_t i = 0; i < n; ++i) {
      const int64_t u = in.get<int64_t>();
      UnitKey key;
      RunResult part;
      deserialize_unit(in, key, part);
      KVSIM_CHECK_MSG(u >= 0 && u < num_units && sweep.units[u].key == key,
                      "gathered unit " << u << " does not match its key");
      KVSIM_CHECK_MSG(unit_rank[u] == -2, "unit " << u << " computed twice");
      parts[u] = std::move(part);
      unit_rank[u] = rank;
    }
  };
  if (mpi.rank == 0) {
    all_stats[0] = stats;
    for (auto& [u, part] : mine) {
      KVSIM_CHECK(unit_rank[u] == -2);
      parts[u] = std::move(part);
      unit_rank[u] = 0;
    }
    for (int r = 1; r < mpi.size; ++r) {
      int go = 1;
      MPI_Send(&go, 1, MPI_INT, r, kTagGo, MPI_COMM_WORLD);
      uint64_t size = 0;
      MPI_Recv(&size, 1, MPI_UINT64_T, r, kTagSize, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      std::vector<char> bytes(size);
      for (size_t at = 0; at < size; at += kChunkBytes) {
        MPI_Recv(bytes.data() + at, static_cast<int>(std::min<size_t>(kChunkBytes, size - at)),
                 MPI_BYTE, r, kTagData, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      }
      try {
        unpack(r, bytes);
      } catch (...) {
        abort_job(mpi, classify(std::current_exception()));
      }
    }
  } else {
    ByteWriter w;
    pack(w);
    mine.clear();
    int go = 0;
    MPI_Request request;
    MPI_Irecv(&go, 1, MPI_INT, 0, kTagGo, MPI_COMM_WORLD, &request);
    Mpi::wait(request);
    const uint64_t size = w.bytes().size();
    MPI_Send(&size, 1, MPI_UINT64_T, 0, kTagSize, MPI_COMM_WORLD);
    for (size_t at = 0; at < size; at += kChunkBytes) {
      MPI_Send(w.bytes().data() + at, static_cast<int>(std::min<size_t>(kChunkBytes, size - at)),
               MPI_BYTE, 0, kTagData, MPI_COMM_WORLD);
    }
  }

  const double gather_seconds = since(gather_start);

  // 8. Rank 0: check, assemble in canonical order, write; every rank agrees.
  f = phase(mpi, [&] {
    if (mpi.rank != 0) return;
    int64_t computed = 0, bits = 0, records = 0;
    for (int64_t u = 0; u < num_units; ++u) {
      KVSIM_CHECK_MSG(unit_rank[u] != -2, "unit " << u << " was never computed");
      if (unit_rank[u] < 0) continue;
      ++computed;
      for (const auto& kv : parts[u].kv) bits += kv.data_bits + kv.meta_bits;
      records += static_cast<int64_t>(parts[u].steps.size() + parts[u].kv.size());
    }
    KVSIM_CHECK_MSG(computed == totals[0] && bits == totals[1] && records == totals[2],
                    "gathered results disagree with the reduction: units "
                        << computed << " vs " << totals[0] << ", bits " << bits << " vs "
                        << totals[1] << ", records " << records << " vs " << totals[2]);
    KVSIM_CHECK(computed + resumed == num_units);
    const auto runs = assemble_runs(sweep, parts);
    SweepReport report;
    report.sweep_file = opt.sweep_file;
    report.kvsim_version = version;
    report.ranks = mpi.size;
    report.threads = threads;
    report.units_from_checkpoint = resumed;
    report.units_computed = computed;
    report.unit_rank = unit_rank;
    report.rank_stats = all_stats;
    report.gather_seconds = gather_seconds;
    report.wall_seconds = since(wall_start);
    const auto write_start = Clock::now();
    write_sweep_results(opt.out, sweep, runs, parts, report);
    const double write_seconds = since(write_start);
    if (!opt.keep_checkpoint) {
      std::error_code ec;
      for (const auto& entry : fs::directory_iterator(opt.checkpoint_dir, ec)) {
        if (entry.path().extension() == ".ckpt") fs::remove(entry.path(), ec);
      }
      fs::remove(opt.checkpoint_dir, ec);  // only when empty
    }
    if (opt.quiet) return;
    std::ostream& os = std::cout;
    const bool many = sweep.traces.size() > 1;
    TextColumn run_column{"run", {}}, trace{"trace", {}}, policy{"policy", {}};
    for (size_t i = 0; i < runs.size(); ++i) {
      run_column.cells.push_back(std::to_string(i));
      trace.cells.push_back(sweep.trace_paths[i / sweep.specs.size()]);
      policy.cells.push_back(runs[i].spec);
    }
    os << "\n";
    print_summary_table(
        os, many ? std::vector{run_column, trace, policy} : std::vector{run_column, policy}, runs);
    double io = 0, validate = 0, exact = 0, unit_s = 0, ckpt = 0, fsync = 0, work = 0;
    for (const auto& s : all_stats) {
      io += s.io_seconds, validate += s.validate_seconds, exact += s.exact_seconds;
      unit_s += s.unit_seconds, ckpt += s.checkpoint_seconds, work += s.work_seconds;
      fsync += s.fsync_seconds;
    }
    os << "\n";
    if (!resume_note.empty()) os << resume_note << "\n";
    os << "sweep: " << runs.size() << " runs (" << sweep.specs.size() << " configs x "
       << sweep.traces.size() << " trace(s)), " << num_units << " units on " << mpi.size
       << " rank(s) x " << threads << " thread(s): " << computed << " computed, " << resumed
       << " from checkpoint\n";
    os << "time: wall " << fmt(report.wall_seconds, 4) << " s; summed over ranks: trace reads "
       << fmt(io + validate, 3) << " s (value check " << fmt(validate, 3) << " s), exact attention "
       << fmt(exact, 3) << " s, units " << fmt(unit_s, 4) << " s, checkpoint appends "
       << fmt(ckpt, 3) << " s (fsync " << fmt(fsync, 3) << " s"
       << (opt.sync == CheckpointSync::kBackground ? ", in the background" : "") << "), work "
       << fmt(work, 4) << " s; rank 0: gather " << fmt(gather_seconds, 3) << " s, results file "
       << fmt(write_seconds, 3) << " s\n";
    os << "results: " << opt.out << "\n";
  });
  if (f.code) return report_failure(mpi, f);
  return 0;
}

}  // namespace

int run_sweep_command(int argc, char** argv, const std::string& kvsim_version) {
  Mpi mpi;
  int code = 0;
  try {
    code = sweep_command(mpi, argc, argv, kvsim_version);
  } catch (...) {
    // Not reached through the agreed phases; a failure here means ranks may
    // disagree, so the job is taken down.
    abort_job(mpi, classify(std::current_exception()));
  }
  std::cout.flush();
  return code;
}

}  // namespace kvsim
