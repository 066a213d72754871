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
//
// The phases are functions of sim/sweep_run.cc; MPI plumbing is in
// sim/sweep_mpi.cc, the options in sim/sweep_options.cc.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>

#include "sim/results.h"
#include "sim/stage_activity.h"
#include "sim/summary_table.h"
#include "sim/sweep.h"
#include "sim/sweep_mpi.h"
#include "sim/sweep_options.h"
#include "sim/sweep_run.h"

namespace fs = std::filesystem;

namespace kvsim {
namespace sweep_driver {
namespace {

int sweep_command(const Mpi& mpi, int argc, char** argv, const std::string& version,
                  const SweepHooks& hooks) {
  const auto wall_start = Clock::now();
  Options opt;
  SweepFile file;
  std::unique_ptr<Sweep> sweep_ptr;

  // 1. Options, sweep file, traces, specs: every rank, agreed.
  Failure f = phase(mpi, [&] {
    opt = parse_options(argc, argv);
    if (opt.help) return;
    file = SweepFile::load(opt.sweep_file);
    apply_overrides(opt, file);
    sweep_ptr = std::make_unique<Sweep>(resolve_sweep(file, opt.traces, opt.max_configs));
    // Before any work: the output is writable and replaces no input; stale
    // temporaries of a killed earlier run are removed.
    if (mpi.rank == 0 && !opt.dry_run) check_sweep_output(opt, *sweep_ptr);
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
    f = print_plan(mpi, opt, sweep);
    return f.code ? report_failure(mpi, f) : 0;
  }

  // The attention backend of --device (every rank, agreed: a rank without a GPU fails all).
  std::unique_ptr<AttentionBackend> backend;
  f = phase(mpi, [&] {
    if (opt.device == "cpu") return;
    if (!hooks.make_backend) {
      throw BackendUnavailable("--device " + opt.device + ": this binary has no such backend");
    }
    backend = hooks.make_backend(opt.device, mpi.local_rank);
  });
  if (f.code) return report_failure(mpi, f);

  // 3. Every trace value (NaN/Inf, truncation), the layers split across ranks.
  RankStats stats;
  f = check_trace_values(mpi, sweep, stats);
  if (f.code) return report_failure(mpi, f);

  // 4. Rank 0: output path, checkpoint directory, resume; then the plan.
  ResumeState resume;
  f = read_checkpoints(mpi, opt, sweep, resume);
  if (f.code) return report_failure(mpi, f);
  WorkPlan plan;
  f = plan_work(mpi, sweep, resume.done, plan);
  if (f.code) return report_failure(mpi, f);
  stats.estimated_cost = plan.load[mpi.rank];

  // 5. This rank's checkpoint file.
  std::unique_ptr<CheckpointWriter> writer;
  f = open_checkpoint(mpi, opt, sweep, resume.attempt, writer);
  if (f.code) return report_failure(mpi, f);

  // 6. Work: this rank's units, block by block.
  const int threads = worker_threads(mpi, opt.threads);
  UnitResults mine = run_units(mpi, opt, sweep, plan, threads, resume.resumed, hooks,
                               std::move(writer), stats, backend.get());

  // 7. Consistency totals, then the gather of partial results onto rank 0.
  const auto gather_start = Clock::now();
  std::vector<RankStats> all_stats;
  const UnitTotals totals = gather_units(mpi, sweep, mine, stats, resume, all_stats);
  const double gather_seconds = since(gather_start);

  // 8. Rank 0: check, assemble in canonical order, write; every rank agrees.
  const std::vector<RunResult>& parts = resume.parts;
  const int64_t resumed = resume.resumed;
  const std::string& resume_note = resume.note;
  const std::vector<int>& unit_rank = resume.unit_rank;
  f = phase(mpi, [&] {
    if (mpi.rank != 0) return;
    const int64_t computed = check_gathered(sweep, resume, totals);
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
    if (opt.quiet) return print_idle_stage_warnings(std::cerr, runs);
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
    os.flush();
    print_idle_stage_warnings(std::cerr, runs);
  });
  if (f.code) return report_failure(mpi, f);
  return 0;
}

}  // namespace
}  // namespace sweep_driver

int run_sweep_command(int argc, char** argv, const std::string& kvsim_version,
                      const SweepHooks& hooks) {
  sweep_driver::Mpi mpi;
  int code = 0;
  try {
    code = sweep_driver::sweep_command(mpi, argc, argv, kvsim_version, hooks);
  } catch (...) {
    // Not reached through the agreed phases; a failure here means ranks may
    // disagree, so the job is taken down.
    sweep_driver::abort_job(mpi, sweep_driver::classify(std::current_exception()));
  }
  std::cout.flush();
  return code;
}

}  // namespace kvsim
