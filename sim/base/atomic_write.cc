#include "sim/base/atomic_write.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

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

}  // namespace kvsim
