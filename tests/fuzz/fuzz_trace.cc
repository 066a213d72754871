// libFuzzer harness for the trace reader: the input is written to a temporary file, opened as
// a trace and every layer and token list is read. Bad files must end in kvsim's FormatError or
// IoError; anything else (a crash, a sanitizer report, another exception, an allocation past
// libFuzzer's -rss_limit_mb / -malloc_limit_mb) is a finding.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "sim/base/errors.h"
#include "trace/trace.h"

namespace {

std::string temp_path() {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/kvsim_fuzz_trace." +
         std::to_string(::getpid()) + ".h5";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = temp_path();
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  } else {
    return 0;
  }
  try {
    kvsim::TraceReader reader(path);
    reader.validate_all_values();  // every token list and layer (and their checksums)
  } catch (const kvsim::FormatError&) {
  } catch (const kvsim::IoError&) {
  }
  std::remove(path.c_str());
  return 0;
}
