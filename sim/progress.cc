#include "sim/progress.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace kvsim {

bool stderr_is_terminal() { return ::isatty(STDERR_FILENO) == 1; }

bool stderr_reaches_terminal_through_mpirun() {
  // Open MPI 4 sets no variable that says whether mpirun's own stderr is a terminal, and
  // gives a rank's stderr a pipe either way; the pipe's reader is the rank's parent (mpirun,
  // or orted on a remote node, whose stderr is no terminal).
  if (std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0 || !S_ISFIFO(st.st_mode)) return false;
  const std::string parent_stderr = "/proc/" + std::to_string(::getppid()) + "/fd/2";
  const int fd = ::open(parent_stderr.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool terminal = ::isatty(fd) == 1;
  ::close(fd);
  return terminal;
}

bool progress_bar_wanted() {
  return stderr_is_terminal() || stderr_reaches_terminal_through_mpirun();
}

ProgressBar::ProgressBar(std::string label, bool enabled, std::function<Clock::time_point()> now,
                         std::FILE* out)
    : label_(std::move(label)), enabled_(enabled), now_(std::move(now)), out_(out) {
  start_ = now_();
}

void ProgressBar::update(size_t done, size_t total) {
  if (!enabled_ || total == 0) return;
  const Clock::time_point now = now_();
  const bool reached_total = done >= total && !drew_total_;
  const auto interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(1.0 / kMaxRedrawsPerSecond));
  if (drawn_ && !reached_total && now - last_draw_ < interval) return;
  drew_total_ = drew_total_ || done >= total;
  last_draw_ = now;
  ++redraws_;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double frac = static_cast<double>(done) / total;
  const double eta = done > 0 ? elapsed * (1 - frac) / frac : 0;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(filled, '#');
  bar.append(kWidth - filled, '-');
  std::fprintf(out_, "\r%s [%s] %zu/%zu  %5.1f%%  elapsed %.0fs  ETA %.0fs ", label_.c_str(),
               bar.c_str(), done, total, 100 * frac, elapsed, eta);
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (drawn_) std::fprintf(out_, "\n");
  drawn_ = false;
}

}  // namespace kvsim
