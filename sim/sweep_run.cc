#include "sim/sweep_run.h"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>

#include "sim/base/errors.h"
#include "sim/calibration.h"

namespace fs = std::filesystem;

namespace kvsim::sweep_driver {
namespace {

// Seconds per estimated cost unit on the reference machine (2-core x86-64 dev
// box, one thread per rank), measured by experiments/sweeps/run_load_test.sh;
// only used to print time estimates.
constexpr double kSecondsPerCost = 2.5e-10;

std::string layers_text(const Sweep& sweep, int trace, int group) {
  std::string out = "{";
  const auto& slots = sweep.groups[trace][group];
  for (size_t i = 0; i < slots.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(sweep.traces[trace]->meta().layer_ids[slots[i]]);
  }
  return out + "}";
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

}  // namespace

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string fmt(double x, int precision) {
  std::ostringstream os;
  os << std::setprecision(precision) << x;
  return os.str();
}

// --- 2. dry run ----------------------------------------------------------------------
Failure print_plan(const Mpi& mpi, const Options& opt, const Sweep& sweep) {
  return phase(mpi, [&] {
    if (mpi.rank != 0) return;
    std::vector<uint8_t> done(sweep.units.size(), 0);
    std::unique_ptr<CheckpointScan> scan;
    if (opt.resume && !opt.checkpoint_dir.empty()) {
      scan =
          std::make_unique<CheckpointScan>(scan_checkpoints(opt.checkpoint_dir, sweep.hash, false));
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
}

// --- 3. trace values -------------------------------------------------------------------
Failure check_trace_values(const Mpi& mpi, const Sweep& sweep, RankStats& stats) {
  return phase(mpi, [&] {
    const auto t0 = Clock::now();
    const auto layers = value_check_layers(sweep);
    for (size_t i = mpi.rank; i < layers.size(); i += mpi.size) {
      (void)sweep.traces[layers[i].trace]->read_layer(layers[i].sequence, layers[i].slot);
    }
    stats.validate_seconds = since(t0);
  });
}

// --- 4. checkpoint directory and plan ------------------------------------------------
Failure read_checkpoints(const Mpi& mpi, const Options& opt, const Sweep& sweep,
                         ResumeState& resume) {
  const int64_t num_units = static_cast<int64_t>(sweep.units.size());
  resume.done.assign(num_units, 0);
  const Failure f = phase(mpi, [&] {
    if (mpi.rank != 0) return;
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
    resume.parts.resize(num_units);
    resume.unit_rank.assign(num_units, -2);
    for (auto& u : scan.units) {
      auto it = sweep.index.find(u.key);
      KVSIM_CHECK_MSG(it != sweep.index.end(), "checkpoint unit outside the sweep");
      resume.done[it->second] = 1;
      resume.parts[it->second] = std::move(u.part);
      resume.unit_rank[it->second] = -1;
      ++resume.resumed;
    }
    if (opt.resume) {
      resume.note =
          fs::exists(opt.checkpoint_dir)
              ? "resume: " + std::to_string(resume.resumed) + " of " + std::to_string(num_units) +
                    " units from " + opt.checkpoint_dir + " (" + std::to_string(scan.files) +
                    " file(s), " + std::to_string(scan.torn_files) + " torn tail(s) ignored, " +
                    std::to_string(scan.duplicates) + " duplicate(s) ignored)"
              : "resume: no checkpoint at " + opt.checkpoint_dir + ", starting from scratch";
    }
    resume.attempt = scan.last_attempt + 1;
    std::error_code ec;
    fs::create_directories(opt.checkpoint_dir, ec);
    if (ec) {
      throw IoError("cannot create checkpoint directory '" + opt.checkpoint_dir +
                    "': " + ec.message());
    }
  });
  if (f.code) return f;
  bcast_vector(mpi, resume.done, 0);
  if (mpi.size > 1) MPI_Bcast(&resume.attempt, 1, MPI_INT32_T, 0, MPI_COMM_WORLD);
  return f;
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

Failure plan_work(const Mpi& mpi, const Sweep& sweep, const std::vector<uint8_t>& done,
                  WorkPlan& plan) {
  const Failure f = phase(mpi, [&] {
    if (mpi.rank != 0) return;
    const ShardPlan shards = make_plan(sweep, done, mpi.size, plan.todo);
    plan.rank_of = shards.rank_of;
    plan.load = shards.load;
  });
  if (f.code) return f;
  bcast_vector(mpi, plan.todo, 0);
  bcast_vector(mpi, plan.rank_of, 0);
  bcast_vector(mpi, plan.load, 0);
  return f;
}

// --- 5. this rank's checkpoint file ------------------------------------------------------
Failure open_checkpoint(const Mpi& mpi, const Options& opt, const Sweep& sweep, int32_t attempt,
                        std::unique_ptr<CheckpointWriter>& writer) {
  return phase(mpi, [&] {
    const std::string path =
        (fs::path(opt.checkpoint_dir) / checkpoint_file_name(attempt, mpi.rank)).string();
    writer = std::make_unique<CheckpointWriter>(path, sweep.hash, opt.sync);
  });
}

int worker_threads(const Mpi& mpi, int requested) {
  if (requested > 0) return requested;
  return std::max(1, omp_get_max_threads() / std::max(1, mpi.local_size));
}

// --- 6. work --------------------------------------------------------------------------------
UnitResults run_units(const Mpi& mpi, const Options& opt, const Sweep& sweep, const WorkPlan& plan,
                      int threads, int64_t resumed, const SweepHooks& hooks,
                      std::unique_ptr<CheckpointWriter> writer, RankStats& stats,
                      const AttentionBackend* backend) {
  std::map<int64_t, std::vector<int64_t>> my_blocks;  // block -> units, ascending
  for (size_t i = 0; i < plan.todo.size(); ++i) {
    if (plan.rank_of[i] == mpi.rank) {
      my_blocks[sweep.units[plan.todo[i]].block].push_back(plan.todo[i]);
    }
  }
  const bool draw = mpi.rank == 0 && !opt.quiet && (opt.progress || progress_bar_wanted());
  Progress progress(mpi, static_cast<int64_t>(plan.todo.size()), draw, resumed);
  UnitResults mine;
  std::map<int64_t, std::vector<std::shared_ptr<const PolicyState>>> prepared;  // by config
  std::mutex mutex;
  std::atomic<int64_t> finished{0};
  const auto work_start = Clock::now();
  for (const auto& [block_index, units] : my_blocks) {
    const SweepBlock& block = sweep.blocks[block_index];
    std::vector<RunResult> results(units.size());
    Failure failure;
    try {
      const UnitData data =
          load_block(sweep, block, &stats.io_seconds, &stats.exact_seconds, backend);
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
          results[i] = run_unit(sweep, unit, data, prepared.at(key),
                                &prefill_caches[omp_get_thread_num()], backend);
          const std::vector<char> record = writer->make_record(unit.key, results[i]);
          std::lock_guard lock(mutex);
          const auto t0 = Clock::now();
          writer->append_record(record);
          stats.checkpoint_seconds += since(t0);
          stats.unit_seconds += results[i].seconds;
          const int64_t count = ++finished;
          if (hooks.unit_checkpointed) hooks.unit_checkpointed(mpi.rank, count);
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
  return mine;
}

// --- 7. gather ----------------------------------------------------------------------------
UnitTotals gather_units(const Mpi& mpi, const Sweep& sweep, UnitResults& mine,
                        const RankStats& stats, ResumeState& resume,
                        std::vector<RankStats>& all_stats) {
  const int64_t num_units = static_cast<int64_t>(sweep.units.size());
  int64_t local_totals[3] = {static_cast<int64_t>(mine.size()), 0, 0};
  for (const auto& [u, part] : mine) {
    for (const auto& kv : part.kv) local_totals[1] += kv.data_bits + kv.meta_bits;
    local_totals[2] += static_cast<int64_t>(part.steps.size() + part.kv.size());
  }
  int64_t totals[3] = {local_totals[0], local_totals[1], local_totals[2]};
  if (mpi.size > 1) MPI_Reduce(local_totals, totals, 3, MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);

  auto pack = [&](ByteWriter& w) {
    w.put(stats);
    w.put<uint64_t>(mine.size());
    for (const auto& [u, part] : mine) {
      w.put<int64_t>(u);
      serialize_unit(w, sweep.units[u].key, part);
    }
  };
  all_stats.assign(mpi.size, RankStats{});
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
      KVSIM_CHECK_MSG(resume.unit_rank[u] == -2, "unit " << u << " computed twice");
      resume.parts[u] = std::move(part);
      resume.unit_rank[u] = rank;
    }
  };
  if (mpi.rank == 0) {
    all_stats[0] = stats;
    for (auto& [u, part] : mine) {
      KVSIM_CHECK(resume.unit_rank[u] == -2);
      resume.parts[u] = std::move(part);
      resume.unit_rank[u] = 0;
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
  return {totals[0], totals[1], totals[2]};
}

// --- 8. check ------------------------------------------------------------------------------
int64_t check_gathered(const Sweep& sweep, const ResumeState& resume, const UnitTotals& totals) {
  const int64_t num_units = static_cast<int64_t>(sweep.units.size());
  int64_t computed = 0, bits = 0, records = 0;
  for (int64_t u = 0; u < num_units; ++u) {
    KVSIM_CHECK_MSG(resume.unit_rank[u] != -2, "unit " << u << " was never computed");
    if (resume.unit_rank[u] < 0) continue;
    ++computed;
    for (const auto& kv : resume.parts[u].kv) bits += kv.data_bits + kv.meta_bits;
    records += static_cast<int64_t>(resume.parts[u].steps.size() + resume.parts[u].kv.size());
  }
  KVSIM_CHECK_MSG(computed == totals.units && bits == totals.bits && records == totals.records,
                  "gathered results disagree with the reduction: units "
                      << computed << " vs " << totals.units << ", bits " << bits << " vs "
                      << totals.bits << ", records " << records << " vs " << totals.records);
  KVSIM_CHECK(computed + resume.resumed == num_units);
  return computed;
}

}  // namespace kvsim::sweep_driver
