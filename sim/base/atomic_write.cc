#include "sim/base/atomic_write.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "sim/base/errors.h"

namespace kvsim {

std::string atomic_temp_path(const std::string& path, const std::string& infix) {
  return path + infix + std::to_string(::getpid());
}

void atomic_commit(const std::string& tmp, const std::string& path) {
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw IoError("cannot rename '" + tmp + "' to '" + path + "': " + why);
  }
}

void atomic_discard(const std::string& tmp) { std::remove(tmp.c_str()); }

namespace {

// True unless `pid` certainly names no process on this host (kill(pid, 0) says ESRCH).
bool process_may_be_alive(long pid) {
  if (pid <= 0 || pid == ::getpid()) return true;
  if (pid > static_cast<long>(std::numeric_limits<pid_t>::max())) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}

}  // namespace

std::vector<std::string> remove_stale_temporaries(const std::string& path,
                                                  const std::string& infix) {
  namespace fs = std::filesystem;
  std::vector<std::string> removed;
  const fs::path target(path);
  const std::string prefix = target.filename().string() + infix;
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    if (process_may_be_alive(std::stol(digits))) continue;
    std::error_code rm;
    if (entry.is_regular_file(rm) && fs::remove(entry.path(), rm)) {
      removed.push_back((target.parent_path() / name).string());
    }
  }
  return removed;
}

}  // namespace kvsim
