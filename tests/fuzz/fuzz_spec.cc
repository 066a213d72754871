// libFuzzer harness for the policy spec parser: any text either parses or throws
// ConfigError, and the canonical form of every accepted spec parses back to itself.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "policies/policy.h"
#include "sim/base/errors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::string canonical;
  try {
    canonical = kvsim::PolicySpec::parse(text).canonical();
  } catch (const kvsim::ConfigError&) {
    return 0;  // refused with a message: fine
  }
  std::string again;
  try {
    again = kvsim::PolicySpec::parse(canonical).canonical();
  } catch (const kvsim::ConfigError& e) {
    std::fprintf(stderr, "canonical form '%s' of '%s' is refused: %s\n", canonical.c_str(),
                 text.c_str(), e.what());
    std::abort();
  }
  if (again != canonical) {
    std::fprintf(stderr, "'%s' -> '%s' -> '%s': the canonical form does not round-trip\n",
                 text.c_str(), canonical.c_str(), again.c_str());
    std::abort();
  }
  return 0;
}
