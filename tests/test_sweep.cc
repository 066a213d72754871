// Sweep files, grid expansion, units, checkpoints and result assembly
// (sim/sweep.h, sim/checkpoint.h) -- everything of `kvsim sweep` but MPI,
// which tests/mpi/ covers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <tuple>

#include "record_testing.h"
#include "sim/base/errors.h"
#include "sim/base/h5.h"
#include "sim/calibration.h"
#include "sim/checkpoint.h"
#include "sim/results.h"
#include "sim/sweep.h"
#include "test_util.h"

namespace kvsim {
namespace {

using testing::expect_same_records;
using testing::TempDir;

std::vector<std::string> specs_of(const std::vector<SweepConfig>& configs) {
  std::vector<std::string> out;
  for (const auto& c : configs) out.push_back(c.spec);
  return out;
}

TEST(SweepFile, ExpandsGridsInFileOrder) {
  const SweepFile f = SweepFile::parse(R"(
traces: [a.h5, /abs/b.h5]
measure: stride=4
seed: 7
sequences: [0, 2]
policies:
  - full
  - spec: "uniform:bits={bits},group={group}"
    grid: {bits: [2, 4], group: [32, 128]}
  - spec: "minicache:gamma={gamma}+uniform:bits=4"
    grid:
      gamma: [0.05, 0.1]
)",
                                       "dir/sub", "s.yaml");
  EXPECT_EQ(f.traces, (std::vector<std::string>{"dir/sub/a.h5", "/abs/b.h5"}));
  EXPECT_EQ(f.measure, "stride=4");
  EXPECT_EQ(f.seed, 7u);
  EXPECT_EQ(f.sequences, (std::vector<int>{0, 2}));
  const auto configs = expand_grid(f.policies);
  EXPECT_EQ(specs_of(configs),
            (std::vector<std::string>{"full", "uniform:bits=2,group=32", "uniform:bits=2,group=128",
                                      "uniform:bits=4,group=32", "uniform:bits=4,group=128",
                                      "minicache:gamma=0.05+uniform:bits=4",
                                      "minicache:gamma=0.1+uniform:bits=4"}));
  EXPECT_EQ(configs[2].origin, "s.yaml:8 bits=2 group=128");
  EXPECT_EQ(configs[0].origin, "s.yaml:7");
}

TEST(SweepFile, Ranges) {
  const SweepFile f = SweepFile::parse(R"(
trace: t.h5
policies:
  - spec: "minicache:gamma={g}"
    grid: {g: {from: 0.0, to: 0.2, step: 0.05}}
  - spec: "streamingllm:window={w}"
    grid: {w: {from: 16, to: 128, factor: 2}}
  - spec: "streamingllm:sinks={s}"
    grid: {s: {from: 0, to: 8, step: 4}}
  - spec: "x:skip={skip}"
    grid: {skip: [[0, 1], [2]]}
)",
                                       "", "s.yaml");
  const auto specs = specs_of(expand_grid(f.policies));
  EXPECT_EQ(specs, (std::vector<std::string>{
                       "minicache:gamma=0", "minicache:gamma=0.05", "minicache:gamma=0.1",
                       "minicache:gamma=0.15", "minicache:gamma=0.2", "streamingllm:window=16",
                       "streamingllm:window=32", "streamingllm:window=64",
                       "streamingllm:window=128", "streamingllm:sinks=0", "streamingllm:sinks=4",
                       "streamingllm:sinks=8", "x:skip=[0,1]", "x:skip=[2]"}));
}

TEST(SweepFile, ErrorsNameTheProblem) {
  auto error_of = [](const std::string& yaml) -> std::string {
    try {
      expand_grid(SweepFile::parse(yaml, "", "s.yaml").policies);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_of("traces: [t]\npolicies: [full\n").find("not valid YAML"), std::string::npos);
  EXPECT_NE(error_of("traces: [t]\npolices: [full]\n").find("unknown key 'polices'"),
            std::string::npos);
  EXPECT_NE(error_of("traces: [t]\n").find("no 'policies'"), std::string::npos);
  EXPECT_NE(error_of("traces: [t]\npolicies: []\n").find("empty"), std::string::npos);
  EXPECT_NE(error_of("traces: [t]\npolicies:\n  - spec: 'u:bits={b}'\n    grid: {bits: [2]}\n")
                .find("uses {b} but the grid has no 'b'"),
            std::string::npos);
  EXPECT_NE(error_of("traces: [t]\npolicies:\n  - spec: 'u:bits={b}'\n    grid: {b: [2], c: [3]}\n")
                .find("grid key 'c' is not used"),
            std::string::npos);
  EXPECT_NE(error_of("traces: [t]\npolicies:\n  - spec: 'u:bits={b}'\n    grid: {b: []}\n")
                .find("no values"),
            std::string::npos);
  EXPECT_NE(
      error_of("traces: [t]\npolicies:\n  - spec: 'u'\n    gird: {}\n").find("unknown key 'gird'"),
      std::string::npos);
  EXPECT_NE(error_of("traces: [t]\nseed: -1\npolicies: [full]\n").find("seed"), std::string::npos);
  EXPECT_NE(error_of("traces: [t]\ntraces: [u]\npolicies: [full]\n").find("appears twice"),
            std::string::npos);
  EXPECT_NE(error_of("traces: [t]\npolicies:\n  - spec: 'u:{b}'\n    grid: {b: {from: 3, to: "
                     "1, step: 1}}\n")
                .find("to < from"),
            std::string::npos);
  EXPECT_NE(error_of("traces: [t]\npolicies:\n  - 'u:bits={b}'\n").find("{b}"), std::string::npos);
  EXPECT_THROW(SweepFile::load("/nonexistent/sweep.yaml"), IoError);
}

// Tiny synthetic traces and a sweep over them.
struct SweepFixture {
  TempDir dir;
  std::string t1, t2;
  SweepFixture() {
    SynthConfig c = testing::tiny_config();
    c.sequences = 3;
    t1 = dir.file("t1.h5");
    write_synth_trace(t1, c);
    SynthConfig w = testing::tiny_config();
    w.seed = 5;
    w.sequences = 2;
    w.sliding_window = 24;  // every layer local: MiniCache still pairs equal windows
    t2 = dir.file("t2.h5");
    write_synth_trace(t2, w);
  }
  SweepFile file(const std::string& policies, const std::string& extra = "") const {
    return SweepFile::parse("traces: [t1.h5, t2.h5]\nseed: 11\n" + extra + "policies:\n" + policies,
                            dir.path().string(), "s.yaml");
  }
};

const char* kPolicies = R"(  - full
  - spec: "uniform:bits={bits},group={group}"
    grid: {bits: [2, 4], group: [16, 32]}
  - spec: "minicache:gamma={gamma}+uniform:bits=4"
    grid: {gamma: [0.05, 0.2]}
  - spec: "streamingllm:sinks=4,window={w}+uniform:bits=4"
    grid: {w: [8, 20]}
  - mikv:lo_bits=2
)";

TEST(Sweep, ResolvesUnitsAndGroups) {
  SweepFixture fx;
  const Sweep s = resolve_sweep(fx.file(kPolicies), {});
  ASSERT_EQ(s.specs.size(), 10u);
  ASSERT_EQ(s.traces.size(), 2u);
  // MiniCache pairs the deep layers: one group holds both.
  for (const auto& groups : s.groups) {
    bool paired = false;
    for (const auto& g : groups) paired = paired || g.size() == 2;
    EXPECT_TRUE(paired);
  }
  const size_t blocks = 3 * s.groups[0].size() + 2 * s.groups[1].size();
  EXPECT_EQ(s.blocks.size(), blocks);
  EXPECT_EQ(s.units.size(), blocks * 10);
  EXPECT_EQ(s.num_runs(), 20);
  for (size_t u = 0; u < s.units.size(); ++u) {
    EXPECT_EQ(s.index.at(s.units[u].key), static_cast<int64_t>(u));
    EXPECT_GT(s.units[u].cost, 0);
  }
  // MiKV asks for decode attention and for prefill attention over the whole
  // prompt, which the configs of a block share: it counts in the block overhead.
  EXPECT_TRUE(s.traits[0][9].decode_attention);
  EXPECT_FALSE(s.traits[0][1].decode_attention);
  EXPECT_EQ(s.traits[0][9].shared_prefill_rows, std::vector<int64_t>{-1});
  EXPECT_TRUE(s.traits[0][1].shared_prefill_rows.empty());
  const Sweep no_mikv = resolve_sweep(fx.file("  - full\n"), {});
  EXPECT_GT(s.blocks[0].overhead, no_mikv.blocks[0].overhead);
  // With unmeasured decode steps, its decode attention makes each unit cost more.
  const Sweep strided =
      resolve_sweep(fx.file("  - uniform\n  - mikv\n", "measure: stride=8\n"), {});
  EXPECT_GT(strided.units[1].cost, strided.units[0].cost);
  // Every (trace, config) run covers each of the trace's blocks once.
  for (int64_t run = 0; run < s.num_runs(); ++run) {
    const auto units = s.units_of_run(run);
    EXPECT_EQ(units.size(), run < 10 ? 3 * s.groups[0].size() : 2 * s.groups[1].size());
    for (int64_t u : units) EXPECT_EQ(s.run_of(s.units[u].key), run);
  }
}

TEST(Sweep, RefusesBadSpecsTracesAndDuplicates) {
  SweepFixture fx;
  auto error_of = [&](const std::string& policies, const std::string& extra = "",
                      std::vector<std::string> traces = {}) -> std::string {
    try {
      resolve_sweep(fx.file(policies, extra), traces);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_of("  - spec: 'uniform:bits={b}'\n    grid: {b: [2, 12]}\n").find("bits=12"),
            std::string::npos);
  // group=24 does not divide head_dim 32: named with the trace.
  const std::string e = error_of("  - uniform:group=24\n");
  EXPECT_NE(e.find("t1.h5"), std::string::npos) << e;
  EXPECT_NE(error_of("  - uniform\n  - uniform:bits=4\n").find("same configuration"),
            std::string::npos);
  EXPECT_NE(error_of("  - full\n", "sequences: [5]\n").find("out of range"), std::string::npos);
  EXPECT_NE(error_of("  - full\n", "measure: sometimes\n").find("measure"), std::string::npos);
  EXPECT_THROW(resolve_sweep(fx.file("  - full\n"), {fx.dir.file("missing.h5")}), IoError);
  EXPECT_NE(error_of("  - full\n", "", {fx.t1, fx.t1}).find("same trace"), std::string::npos);
}

TEST(Sweep, IdentityChangesWithTheSweep) {
  SweepFixture fx;
  const Sweep a = resolve_sweep(fx.file(kPolicies), {});
  const Sweep b = resolve_sweep(fx.file(kPolicies), {});
  EXPECT_EQ(a.hash, b.hash);
  EXPECT_NE(a.hash, resolve_sweep(fx.file(kPolicies, "measure: last=4\n"), {}).hash);
  EXPECT_NE(a.hash, resolve_sweep(fx.file("  - full\n"), {}).hash);
  EXPECT_NE(a.hash, resolve_sweep(fx.file(kPolicies), {fx.t1}).hash);
  // The spelling of a spec does not matter, its canonical form does.
  EXPECT_EQ(resolve_sweep(fx.file("  - uniform\n"), {}).hash,
            resolve_sweep(fx.file("  - 'uniform:bits=4'\n"), {}).hash);
}

// Units computed in any order (as ranks would) and assembled in canonical
// order give exactly what `kvsim replay` computes for each trace.
TEST(Sweep, UnitsAssembleToTheReplayResults) {
  SweepFixture fx;
  const Sweep s = resolve_sweep(fx.file(kPolicies), {});
  std::vector<RunResult> parts(s.units.size());
  std::vector<size_t> order(s.units.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(3));
  for (size_t u : order) {
    const SweepUnit& unit = s.units[u];
    const UnitData data = load_block(s, s.blocks[unit.block], nullptr, nullptr);
    parts[u] = run_unit(s, unit, data,
                        prepare_policy(s.specs[unit.key.config], *s.traces[unit.key.trace]));
  }
  const auto runs = assemble_runs(s, parts);
  ASSERT_EQ(runs.size(), 20u);
  for (size_t t = 0; t < s.traces.size(); ++t) {
    ReplayOptions options;
    options.seed = s.seed;
    options.threads = 2;
    const auto expected = replay(*s.traces[t], s.specs, options);
    for (size_t c = 0; c < s.specs.size(); ++c) {
      SCOPED_TRACE(s.configs[c].spec);
      const RunResult& got = runs[t * s.specs.size() + c];
      EXPECT_EQ(got.spec, expected[c].spec);
      EXPECT_EQ(got.resolved, expected[c].resolved);
      EXPECT_EQ(got.seed, expected[c].seed);
      expect_same_records(got, expected[c]);
    }
  }
}

TEST(Sweep, WritesTraceColumnsAndSweepTables) {
  SweepFixture fx;
  const Sweep s = resolve_sweep(fx.file("  - full\n  - uniform:bits=2\n"), {});
  std::vector<RunResult> parts(s.units.size());
  for (size_t u = 0; u < s.units.size(); ++u) {
    const SweepUnit& unit = s.units[u];
    const UnitData data = load_block(s, s.blocks[unit.block], nullptr, nullptr);
    parts[u] = run_unit(s, unit, data, {});
  }
  SweepReport report;
  report.kvsim_version = "test";
  report.units_computed = static_cast<int64_t>(s.units.size());
  report.unit_rank.assign(s.units.size(), 0);
  report.rank_stats.resize(1);
  const std::string out = fx.dir.file("r.h5");
  write_sweep_results(out, s, assemble_runs(s, parts), parts, report);
  h5::Handle file = h5::open_file_readonly(out);
  EXPECT_EQ(h5::read_attr_int(file.get(), "num_runs", "r"), 4);
  EXPECT_EQ(h5::read_attr_int(file.get(), "num_traces", "r"), 2);
  h5::Handle run = h5::open_group(file.get(), "runs/0003", "r");
  EXPECT_EQ(h5::read_attr_string(run.get(), "trace_path", "r"), fx.t2);
  EXPECT_EQ(h5::read_attr_string(run.get(), "spec", "r"), "uniform:bits=2");
  h5::Handle summary = h5::open_group(file.get(), "summary", "r");
  EXPECT_EQ(h5::read_int32_vector(summary.get(), "trace_index", "r"),
            (std::vector<int32_t>{0, 0, 1, 1}));
  h5::Handle sweep = h5::open_group(file.get(), "sweep", "r");
  EXPECT_EQ(h5::read_attr_int(sweep.get(), "units_total", "r"),
            static_cast<int64_t>(s.units.size()));
  EXPECT_EQ(h5::dataset_shape(h5::open_dataset(sweep.get(), "units/seconds", "r").get())[0],
            s.units.size());
  for (const auto& entry : std::filesystem::directory_iterator(fx.dir.path())) {
    EXPECT_EQ(entry.path().filename().string().find("tmp"), std::string::npos) << entry.path();
  }
}

// --- checkpoints ------------------------------------------------------------------
RunResult sample_part(int salt) {
  RunResult r;
  r.seconds = 0.25 * salt;
  for (int i = 0; i < 3 + salt; ++i) {
    r.steps.push_back(testing::sample_record<StepRecord>(kStepColumns, salt, i));
    r.kv.push_back(testing::sample_record<KvRecord>(kKvColumns, salt, i));
  }
  r.counters["minicache.merged"] = 3.0 * salt;
  return r;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(Checkpoint, RoundTripIsBitExact) {
  TempDir dir;
  {
    CheckpointWriter w(dir.file(checkpoint_file_name(1, 0)), 42);
    for (int i = 0; i < 2; ++i) w.append({0, i, 1, 2 * i}, sample_part(i));
  }
  {
    // The background fsync mode writes the same bytes; sync() waits for the fsync.
    CheckpointWriter w(dir.file(checkpoint_file_name(1, 1)), 42, CheckpointSync::kBackground);
    for (int i = 2; i < 4; ++i) w.append({0, i, 1, 2 * i}, sample_part(i));
    w.sync();
    EXPECT_GE(w.fsync_seconds(), 0.0);
  }
  const CheckpointScan scan = scan_checkpoints(dir.path().string(), 42, true);
  EXPECT_EQ(scan.files, 2);
  EXPECT_EQ(scan.torn_files, 0);
  ASSERT_EQ(scan.units.size(), 4u);
  EXPECT_EQ(scan.last_attempt, 1);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(scan.units[i].key, (UnitKey{0, i, 1, 2 * i}));
    expect_same_records(scan.units[i].part, sample_part(i));
    EXPECT_EQ(scan.units[i].part.seconds, sample_part(i).seconds);
  }
}

// A kill mid-write leaves a torn last record: at every cut point the complete
// records are kept and the torn one is ignored.
TEST(Checkpoint, TornTailIsIgnoredAtEveryCut) {
  TempDir dir;
  const std::string path = dir.file("x.ckpt");
  {
    CheckpointWriter w(path, 9);
    w.append({0, 0, 0, 0}, sample_part(1));
    w.append({0, 0, 0, 1}, sample_part(2));
  }
  const std::vector<char> bytes = read_bytes(path);
  CheckpointScan one;
  scan_checkpoint_bytes(bytes, 9, false, one);
  ASSERT_EQ(one.units.size(), 2u);
  CheckpointWriter probe(dir.file("probe.ckpt"), 9);
  const size_t first = probe.make_record({0, 0, 0, 0}, sample_part(1)).size();
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    CheckpointScan scan;
    scan_checkpoint_bytes(std::vector<char>(bytes.begin(), bytes.begin() + cut), 9, true, scan);
    const size_t expect = cut >= first ? 1 : 0;
    ASSERT_EQ(scan.units.size(), expect) << "cut at " << cut;
    EXPECT_EQ(scan.torn_files, cut == 0 || cut == first ? 0 : 1) << "cut at " << cut;
  }
}

TEST(Checkpoint, CorruptionForeignSweepsAndDuplicates) {
  TempDir dir;
  const std::string path = dir.file("x.ckpt");
  {
    CheckpointWriter w(path, 9);
    w.append({0, 0, 0, 0}, sample_part(1));
    w.append({0, 0, 0, 1}, sample_part(2));
  }
  std::vector<char> bytes = read_bytes(path);
  // A flipped payload byte of the second record fails its checksum.
  bytes[bytes.size() - 5] ^= 0x10;
  CheckpointScan scan;
  scan_checkpoint_bytes(bytes, 9, true, scan);
  EXPECT_EQ(scan.units.size(), 1u);
  EXPECT_EQ(scan.torn_files, 1);

  {
    CheckpointWriter other(dir.file(checkpoint_file_name(3, 1)), 1234);
    other.append({0, 0, 0, 5}, sample_part(1));
    CheckpointWriter again(dir.file(checkpoint_file_name(2, 0)), 9);
    again.append({0, 0, 0, 0}, sample_part(1));  // the same unit as in x.ckpt
  }
  const CheckpointScan all = scan_checkpoints(dir.path().string(), 9, false);
  EXPECT_EQ(all.files, 3);
  EXPECT_EQ(all.foreign_records, 1);
  EXPECT_EQ(all.foreign_hash, 1234u);
  EXPECT_EQ(all.duplicates, 1);
  EXPECT_EQ(all.units.size(), 2u);
  EXPECT_EQ(all.last_attempt, 3);
  EXPECT_TRUE(scan_checkpoints(dir.file("missing"), 9, true).units.empty());
}

}  // namespace
}  // namespace kvsim
