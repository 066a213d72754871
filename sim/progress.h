// A progress bar with ETA on stderr; silent when stderr is not a terminal.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace kvsim {

class ProgressBar {
 public:
  ProgressBar(std::string label, bool enabled);
  void update(size_t done, size_t total);
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

bool stderr_is_terminal();

}  // namespace kvsim
