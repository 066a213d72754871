// Helpers shared by the tests: temporary files and small synthetic traces.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "sim/engine.h"
#include "trace/synth.h"

namespace kvsim::testing {

// A fresh temporary directory, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvsim_test_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline SynthConfig tiny_config() { return synth_preset("tiny"); }

// Metadata of a hand-made trace: one layer, one query head, one KV head.
inline TraceMeta hand_meta(int head_dim, double attn_scale = 0.5) {
  TraceMeta m;
  m.model_name = "hand";
  m.num_model_layers = 1;
  m.layer_ids = {0};
  m.sliding_window = {0};
  m.num_q_heads = 1;
  m.num_kv_heads = 1;
  m.head_dim = head_dim;
  m.attn_scale = attn_scale;
  return m;
}

// Replays `specs` over a synthetic trace written to `dir`.
inline std::vector<RunResult> replay_synth(const SynthConfig& config,
                                           const std::vector<std::string>& specs,
                                           const TempDir& dir, ReplayOptions options = {}) {
  const std::string path = dir.file("trace_" + std::to_string(config.seed) + ".h5");
  if (!std::filesystem::exists(path)) write_synth_trace(path, config);
  TraceReader reader(path);
  std::vector<PolicySpec> parsed;
  for (const auto& s : specs) parsed.push_back(PolicySpec::parse(s));
  return replay(reader, parsed, options);
}

inline double mean_rel_err(const RunResult& r) {
  double s = 0;
  for (const auto& x : r.steps) s += x.rel_err;
  return r.steps.empty() ? 0 : s / r.steps.size();
}
inline double mean_key_err(const RunResult& r) {
  double s = 0;
  for (const auto& x : r.kv) s += x.key_err;
  return r.kv.empty() ? 0 : s / r.kv.size();
}

}  // namespace kvsim::testing
