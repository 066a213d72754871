// Atomic file replacement: write a temporary file in the same directory as the
// target, then rename it over the target, so that readers never see a partial
// file. Used by every file kvsim writes (traces, results, sweep results, SKVQ
// calibration files).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kvsim {

// `<path><infix><pid>`: a temporary name next to `path`, unique per process.
std::string atomic_temp_path(const std::string& path, const std::string& infix = ".tmp.");

// Renames `tmp` to `path`; on failure removes `tmp` and throws IoError
// ("cannot rename 'tmp' to 'path': <reason>").
void atomic_commit(const std::string& tmp, const std::string& path);

// Removes `tmp` if it exists (errors ignored).
void atomic_discard(const std::string& tmp);

// Removes the temporaries of `path` (`<path><infix><pid>`) whose process is no longer
// alive on this host, i.e. left by a process that was killed while writing; returns
// their names. A temporary of a live process (this one included) is kept. On a
// filesystem shared by several hosts a pid is only checked on this host (docs/cli.md).
std::vector<std::string> remove_stale_temporaries(const std::string& path,
                                                  const std::string& infix = ".tmp.");

// Calls write(tmp) with a temporary path next to `path`, then renames it to
// `path`. If `write` throws, the temporary file is removed and the exception
// propagates; `path` is untouched in every failure.
template <typename WriteFn>
void atomic_write(const std::string& path, WriteFn&& write, const std::string& infix = ".tmp.") {
  const std::string tmp = atomic_temp_path(path, infix);
  try {
    std::forward<WriteFn>(write)(tmp);
  } catch (...) {
    atomic_discard(tmp);
    throw;
  }
  atomic_commit(tmp, path);
}

}  // namespace kvsim
