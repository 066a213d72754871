// Checks of an output path made before any work (docs/cli.md, "What kvsim refuses"):
// every command that writes a file calls check_output_file() first, so that a
// mistyped output never replaces one of the command's inputs and an unwritable
// location fails at once rather than after the replay.
#pragma once

#include <string>
#include <vector>

#include "policies/policy.h"

namespace kvsim {

// Throws unless `out` can be written as a new file: it is not empty, its directory
// exists and is writable, it is not a directory, and it is not the same file as any
// existing path of `inputs` (device and inode compared, so another spelling, a hard
// link or a symlink of an input is refused too). `what` names the output in messages
// ("results", "trace", "calibration file"). Then removes temporaries of `out` left
// by killed processes (remove_stale_temporaries, sim/base/atomic_write.h).
void check_output_file(const std::string& out, const std::vector<std::string>& inputs,
                       const std::string& what);

// The files a spec reads besides the trace: every non-empty string parameter
// (SKVQ's `calib`).
std::vector<std::string> spec_input_files(const PolicySpec& spec);

}  // namespace kvsim
