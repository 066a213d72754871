// The MPI plumbing of `kvsim sweep`: the communicator, failures that every rank
// agrees on, chunked broadcasts, and the progress reports that workers send to
// rank 0. Only the sweep driver (sim/sweep_main.cc, sim/sweep_run.cc) uses it.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "sim/progress.h"

namespace kvsim::sweep_driver {

enum Tag : int { kTagProgress = 11, kTagDone = 12, kTagGo = 13, kTagSize = 14, kTagData = 15 };
// Larger payloads travel in messages of at most this many bytes.
constexpr size_t kChunkBytes = size_t{1} << 28;

struct Failure {
  int code = 0;  // 0 = none; 1 input file, 2 configuration, 3 internal
  std::string message;
};

// The exit code and message of an exception (kvsim's error types, then any).
Failure classify(std::exception_ptr error);

// Initialises MPI (funneled: OpenMP threads never call MPI) unless the caller did, and then
// finalises it. A process that no MPI launcher started runs as the only rank without MPI: then
// size == 1 and no MPI call may be made (every collective below checks size first).
class Mpi {
 public:
  Mpi();
  ~Mpi();

  std::string prefix() const { return size > 1 ? "[rank " + std::to_string(rank) + "] " : ""; }

  // Completes a request without spinning a core: ranks that wait (for rank 0
  // writing results, or for slower ranks) leave the CPU to those still working.
  static void wait(MPI_Request& request);

  int rank = 0, size = 1, local_size = 1, local_rank = 0;  // local: on this node
  MPI_Comm progress = MPI_COMM_NULL;

  Mpi(const Mpi&) = delete;  // owns MPI's lifetime and a communicator
  Mpi& operator=(const Mpi&) = delete;

 private:
  bool owner_ = false;
  bool active_ = false;  // MPI is initialised (and `progress` a communicator)
};

// All ranks call this with their own outcome of a phase; every rank returns
// the failure of the lowest failing rank (its own when it failed itself).
Failure agree(const Mpi& mpi, const Failure& mine);

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

// Prints the failure (with the rank's prefix) in one write; returns its code.
int report_failure(const Mpi& mpi, const Failure& f);

// A failure after work started, when other ranks may be blocked in MPI calls:
// print it and take the whole job down with a non-zero status.
[[noreturn]] void abort_job(const Mpi& mpi, const Failure& f);

// Broadcasts `v` from `root` (the other ranks' copies are resized).
template <typename T>
void bcast_vector(const Mpi& mpi, std::vector<T>& v, int root) {
  if (mpi.size == 1) return;
  uint64_t n = v.size();
  MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
  v.resize(n);
  const size_t bytes = n * sizeof(T);
  for (size_t at = 0; at < bytes; at += kChunkBytes) {
    MPI_Bcast(reinterpret_cast<char*>(v.data()) + at,
              static_cast<int>(std::min(kChunkBytes, bytes - at)), MPI_BYTE, root, MPI_COMM_WORLD);
  }
}

// Workers send their cumulative unit count to rank 0 without blocking (one
// message in flight at a time; counts are cumulative so a skipped one loses
// nothing), then a final count with kTagDone. Rank 0 polls between its own
// units and, when its own work is done, until every worker has finished.
class Progress {
 public:
  Progress(const Mpi& mpi, int64_t total, bool draw, int64_t resumed);

  // From the thread that called MPI_Init only.
  void local(int64_t count);
  void finish(int64_t count);

 private:
  int64_t sum() const;
  bool poll();

  const Mpi& mpi_;
  int64_t total_;
  std::vector<int64_t> done_;
  int finished_ = 0;
  ProgressBar bar_;
  MPI_Request request_ = MPI_REQUEST_NULL;
  bool pending_ = false;
  int64_t buffer_ = 0;
};

}  // namespace kvsim::sweep_driver
