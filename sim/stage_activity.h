// Stages that never act: a composition whose stage did nothing over a whole run (an evict
// stage that evicted nothing, a quantizer whose window covered every token, a merge stage
// that merged nothing) costs what the stage costs but measures the composition without it.
// The engine records, per spec stage, the shards in which it acted (RunResult::stage_acted);
// these functions turn that into the results attribute `idle_stages` and the CLI's warnings
// (docs/replay.md, "Stages that never act").
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "sim/engine.h"

namespace kvsim {

// The names of the run's stages (RunResult::stages, `a+b`) that never acted, in spec order;
// empty when every stage acted or the run carries no activity record.
std::vector<std::string> idle_stages(const RunResult& run);

// One warning line per idle stage of the run (no trailing newline on the last), saying what
// the stage never did, e.g. "run 3 'h2o+mikv': stage mikv never acted (stored no entry below
// 16 bits): its fidelity is that of the composition without it"; "" when none.
std::string idle_stage_warnings(const std::string& run_label, const RunResult& run);

// Writes "kvsim: warning: run N 'spec': stage ..." for every idle stage of every run (the
// runs of `kvsim replay` or `kvsim sweep`, indexed as in the results file).
void print_idle_stage_warnings(std::ostream& os, const std::vector<RunResult>& runs);

}  // namespace kvsim
