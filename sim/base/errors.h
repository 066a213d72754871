// Typed errors thrown at kvsim's boundaries. Library code never calls exit();
// `main` catches these and turns them into a message and a non-zero exit.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace kvsim {

// Base of every error kvsim throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad policy spec, parameter, option or combination.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A trace or results file that does not follow its schema (missing dataset,
// wrong version, shape mismatch, NaN/Inf, truncated data).
class FormatError : public Error {
 public:
  using Error::Error;
};

// A file that cannot be opened, read, written or renamed.
class IoError : public Error {
 public:
  using Error::Error;
};

// An optional backend (CUDA) that this build or machine does not have.
class BackendUnavailable : public Error {
 public:
  using Error::Error;
};

// Violated internal invariant: a bug in kvsim, not bad input.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] inline void check_failed(const char* expr, const char* file, int line,
                                      const std::string& msg) {
  std::ostringstream os;
  os << "internal check failed: " << expr << " at " << file << ":" << line;
  if (!msg.empty()) os << ": " << msg;
  throw InternalError(os.str());
}
}  // namespace detail

}  // namespace kvsim

// Checks an internal invariant; throws InternalError (never aborts) so that
// `main` can report it and MPI jobs can shut down cleanly.
#define KVSIM_CHECK(cond)                                                      \
  do {                                                                         \
    if (!(cond)) ::kvsim::detail::check_failed(#cond, __FILE__, __LINE__, ""); \
  } while (0)

#define KVSIM_CHECK_MSG(cond, msg)                                                     \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::ostringstream kvsim_check_os_;                                              \
      kvsim_check_os_ << msg;                                                          \
      ::kvsim::detail::check_failed(#cond, __FILE__, __LINE__, kvsim_check_os_.str()); \
    }                                                                                  \
  } while (0)
