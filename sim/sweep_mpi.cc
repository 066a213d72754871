#include "sim/sweep_mpi.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "sim/base/errors.h"

namespace kvsim::sweep_driver {

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

// --- Mpi ----------------------------------------------------------------------
// Whether an MPI launcher started this process (Open MPI's mpirun, a PMI or PMIx launcher such
// as MPICH's Hydra or Slurm's srun): each sets its rank in the environment.
bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

Mpi::Mpi() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized && !launched_by_mpi()) {
    // Started without mpirun: one rank, and MPI is not started at all (its singleton start-up
    // and finalisation cost 0.3 s here, a tenth of a small sweep).
    return;
  }
  active_ = true;
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
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_free(&local);
}

Mpi::~Mpi() {
  if (!active_) return;
  MPI_Comm_free(&progress);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owner_ && !finalized) MPI_Finalize();
}

void Mpi::wait(MPI_Request& request) {
  int done = 0;
  int nap_us = 50;
  while (true) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) return;
    std::this_thread::sleep_for(std::chrono::microseconds(nap_us));
    nap_us = std::min(nap_us * 2, 5000);
  }
}

// --- agreed failures --------------------------------------------------------------
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

int report_failure(const Mpi& mpi, const Failure& f) {
  // One write, so that the lines of several ranks do not interleave.
  const std::string line =
      mpi.prefix() + "kvsim: " + (f.code == 3 ? "" : "error: ") + f.message + "\n";
  std::fflush(stderr);
  if (::write(STDERR_FILENO, line.data(), line.size()) < 0) std::perror("kvsim");
  return f.code;
}

void abort_job(const Mpi& mpi, const Failure& f) {
  report_failure(mpi, f);
  if (mpi.size > 1) MPI_Abort(MPI_COMM_WORLD, f.code);
  std::_Exit(f.code);
}

// --- Progress ------------------------------------------------------------------
Progress::Progress(const Mpi& mpi, int64_t total, bool draw, int64_t resumed)
    : mpi_(mpi),
      total_(total),
      done_(mpi.size, 0),
      bar_(resumed > 0 ? "sweep (+" + std::to_string(resumed) + " resumed)" : "sweep", draw) {}

void Progress::local(int64_t count) {
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

void Progress::finish(int64_t count) {
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

int64_t Progress::sum() const {
  int64_t s = 0;
  for (int64_t d : done_) s += d;
  return s;
}

bool Progress::poll() {
  bool got = false;
  while (mpi_.size > 1) {
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

}  // namespace kvsim::sweep_driver
