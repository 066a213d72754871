#include "sim/stage_activity.h"

#include <sstream>

#include "policies/policy.h"

namespace kvsim {
namespace {

std::vector<std::string> split_stages(const std::string& stages) {
  std::vector<std::string> names;
  std::stringstream ss(stages);
  std::string name;
  while (std::getline(ss, name, '+')) names.push_back(name);
  return names;
}

// What a stage of this kind does when it acts (policies/policy.h, StoreStage::acted).
const char* never_did(const std::string& name) {
  const PolicyInfo* info = PolicyRegistry::instance().find(name);
  if (!info) return "did nothing";
  switch (info->kind) {
    case StageKind::kEvict:
      return "evicted no entry";
    case StageKind::kMerge:
      return "merged no entries";
    case StageKind::kQuantize:
      return "stored no entry below 16 bits";
  }
  return "did nothing";
}

}  // namespace

std::vector<std::string> idle_stages(const RunResult& run) {
  const std::vector<std::string> names = split_stages(run.stages);
  std::vector<std::string> idle;
  if (names.size() != run.stage_acted.size()) return idle;  // no record of activity
  for (size_t i = 0; i < names.size(); ++i) {
    if (run.stage_acted[i] == 0) idle.push_back(names[i]);
  }
  return idle;
}

std::string idle_stage_warnings(const std::string& run_label, const RunResult& run) {
  std::string out;
  for (const std::string& name : idle_stages(run)) {
    if (!out.empty()) out += "\n";
    out += run_label + ": stage " + name + " never acted over the whole run (" + never_did(name) +
           "): its fidelity is that of the composition without it";
  }
  return out;
}

void print_idle_stage_warnings(std::ostream& os, const std::vector<RunResult>& runs) {
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string lines =
        idle_stage_warnings("run " + std::to_string(i) + " '" + runs[i].spec + "'", runs[i]);
    std::stringstream ss(lines);
    std::string line;
    while (std::getline(ss, line)) os << "kvsim: warning: " << line << "\n";
  }
}

}  // namespace kvsim
