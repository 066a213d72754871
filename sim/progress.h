// A progress bar with ETA on stderr, redrawn at most kMaxRedrawsPerSecond times a second;
// silent when disabled (see progress_bar_wanted()).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <string>

namespace kvsim {

class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int kMaxRedrawsPerSecond = 4;

  // `now` and `out` are for tests (an injected clock, a memory stream).
  ProgressBar(std::string label, bool enabled, std::function<Clock::time_point()> now = Clock::now,
              std::FILE* out = stderr);
  // Redraws when the first update comes, when `done` reaches `total` for the first time,
  // or when 1/kMaxRedrawsPerSecond has passed since the last redraw; otherwise does nothing.
  void update(size_t done, size_t total);
  void finish();
  int redraws() const { return redraws_; }

 private:
  std::string label_;
  bool enabled_;
  std::function<Clock::time_point()> now_;
  std::FILE* out_;
  bool drawn_ = false;
  bool drew_total_ = false;
  int redraws_ = 0;
  Clock::time_point start_, last_draw_;
};

bool stderr_is_terminal();

// Whether this process's stderr ends on a terminal through Open MPI's mpirun: the process
// was launched by mpirun (OMPI_COMM_WORLD_SIZE is set), its stderr is a pipe (the one
// mpirun reads, Open MPI gives the ranks no terminal) and its parent's stderr, where mpirun
// writes what it reads, is a terminal. Linux (/proc); false where it cannot tell.
bool stderr_reaches_terminal_through_mpirun();

// The default for a progress bar on stderr: a terminal, directly or through mpirun.
bool progress_bar_wanted();

}  // namespace kvsim
