#include "sim/output_check.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "sim/base/atomic_write.h"
#include "sim/base/errors.h"

namespace fs = std::filesystem;

namespace kvsim {

void check_output_file(const std::string& out, const std::vector<std::string>& inputs,
                       const std::string& what) {
  if (out.empty()) throw ConfigError("the " + what + " path (--out) is empty");
  const std::string prefix = "cannot write " + what + " '" + out + "': ";
  fs::path dir = fs::path(out).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw IoError(prefix + "directory '" + dir.string() + "' does not exist");
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    throw IoError(prefix + "directory '" + dir.string() + "' is not writable");
  }
  struct stat target {};
  if (::stat(out.c_str(), &target) == 0) {
    if (S_ISDIR(target.st_mode)) throw IoError(prefix + "it is a directory");
    for (const auto& input : inputs) {
      struct stat in {};
      if (input.empty() || ::stat(input.c_str(), &in) != 0) continue;
      if (in.st_dev == target.st_dev && in.st_ino == target.st_ino) {
        throw ConfigError("refusing to write " + what + " '" + out + "': it is the input '" +
                          input + "' (the same file), which would be replaced; choose another " +
                          "output path");
      }
    }
  }
  for (const auto& stale : remove_stale_temporaries(out)) {
    std::cerr << "kvsim: removed '" << stale << "', left by a process that no longer runs\n";
  }
}

std::vector<std::string> spec_input_files(const PolicySpec& spec) {
  std::vector<std::string> files;
  for (const auto& stage : spec.stages()) {
    for (const auto& param : stage.info->params) {
      if (param.type != ParamType::kString) continue;
      const std::string& value = stage.params.get_string(param.name);
      if (!value.empty()) files.push_back(value);
    }
  }
  return files;
}

}  // namespace kvsim
