// Hostile files: attributes of the wrong shape, class or range, declared sizes the file does
// not hold, damaged chunks, values that overflow the engine's float arithmetic, old files
// without checksums, and results that would hold NaN (docs/reliability.md).
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "sim/base/h5.h"
#include "sim/engine.h"
#include "sim/results.h"
#include "test_util.h"
#include "trace/synth.h"
#include "trace/trace.h"

namespace kvsim {
namespace {

using testing::open_rw;
using testing::TempDir;
using testing::write_tiny;

// The message of the FormatError that opening and fully reading `path` throws ("" if none).
std::string read_error(const std::string& path) {
  try {
    TraceReader reader(path);
    reader.validate_all_values();
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

// Replaces attribute `name` of `obj` by an array of `n` int64 values `value`.
void put_int_array_attr(hid_t obj, const char* name, hsize_t n, int64_t value) {
  H5Adelete(obj, name);
  std::vector<int64_t> values(n, value);
  h5::Handle space(H5Screate_simple(1, &n, nullptr));
  h5::Handle attr(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  ASSERT_TRUE(attr.valid());
  ASSERT_GE(H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()), 0);
}

// Replaces a 1-D dataset by `values` of file type `file_type` (written from doubles).
void put_vector(hid_t location, const char* name, hid_t file_type, std::vector<double> values) {
  H5Ldelete(location, name, H5P_DEFAULT);
  const hsize_t n = values.size();
  h5::Handle space(H5Screate_simple(1, &n, nullptr));
  h5::Handle dset(
      H5Dcreate2(location, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  ASSERT_TRUE(dset.valid());
  ASSERT_GE(H5Dwrite(dset.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
            0);
}

template <typename Edit>
std::string damaged_error(Edit edit, int sequences = 1) {
  TempDir dir;
  const std::string path = write_tiny(dir, "t.h5", StoredDType::kFloat16, 0, sequences);
  {
    h5::Handle f = open_rw(path);
    edit(f.get());
  }
  return read_error(path);
}

TEST(HostileAttributes, ArrayVersionIsRefusedNotReadPastItsEnd) {
  // 8192 values (64 KB): the old reader copied them all into one int64 on the stack.
  const std::string error =
      damaged_error([](hid_t f) { put_int_array_attr(f, "version", 8192, 1); });
  EXPECT_NE(error.find("'version' must hold one value, not 8192"), std::string::npos) << error;
}

TEST(HostileAttributes, TwoElementPromptLenIsRefused) {
  const std::string error = damaged_error([](hid_t f) {
    h5::Handle g(H5Gopen2(f, "sequences/000000", H5P_DEFAULT));
    put_int_array_attr(g.get(), "prompt_len", 2, 8);
  });
  EXPECT_NE(error.find("'prompt_len' must hold one value, not 2"), std::string::npos) << error;
}

TEST(HostileAttributes, OneElementArrayIsOneValue) {
  // What h5py writes for a 1-element list: accepted as the value.
  const SynthConfig c = synth_preset("tiny");
  const std::string error = damaged_error([&](hid_t f) {
    h5::Handle g(H5Gopen2(f, "sequences/000000", H5P_DEFAULT));
    put_int_array_attr(g.get(), "prompt_len", 1, c.prompt_len);
  });
  EXPECT_EQ(error, "");
}

TEST(HostileAttributes, HeadCountBeyond32BitsIsNotWrapped) {
  const int64_t wraps_to_9 = (int64_t{1} << 32) + 9;
  const std::string error =
      damaged_error([&](hid_t f) { put_int_array_attr(f, "num_q_heads", 1, wraps_to_9); });
  EXPECT_NE(error.find("'num_q_heads' = " + std::to_string(wraps_to_9) + " is outside [1, " +
                       std::to_string(kMaxTraceHeads) + "]"),
            std::string::npos)
      << error;
}

TEST(HostileAttributes, UnsignedValueAboveInt64IsRefused) {
  const std::string error = damaged_error([](hid_t f) {
    H5Adelete(f, "num_kv_heads");
    const uint64_t huge = ~uint64_t{0};
    h5::Handle space(H5Screate(H5S_SCALAR));
    h5::Handle attr(
        H5Acreate2(f, "num_kv_heads", H5T_STD_U64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
    ASSERT_GE(H5Awrite(attr.get(), H5T_NATIVE_UINT64, &huge), 0);
  });
  EXPECT_NE(error.find("'num_kv_heads' = 18446744073709551615 is out of range"), std::string::npos)
      << error;
}

TEST(HostileAttributes, FloatLayerIdsAreNotTruncated) {
  const SynthConfig c = synth_preset("tiny");
  const std::string error = damaged_error([&](hid_t f) {
    std::vector<double> ids;
    for (int l = 0; l < c.model_layers; ++l) ids.push_back(l + 0.5);
    put_vector(f, "layer_ids", H5T_IEEE_F64LE, ids);
  });
  EXPECT_NE(error.find("'layer_ids' must hold integers"), std::string::npos) << error;
}

TEST(HostileAttributes, WideLayerIdsAreRangeChecked) {
  const std::string error = damaged_error([](hid_t f) {
    put_vector(f, "layer_ids", H5T_STD_I64LE, {0, 1, 2, 4294967299.0});
  });
  EXPECT_NE(error.find("'layer_ids'[3] = 4294967299 does not fit 32 bits"), std::string::npos)
      << error;
}

TEST(HostileAttributes, SequenceCountMustMatchTheGroups) {
  const std::string error =
      damaged_error([](hid_t f) { put_int_array_attr(f, "num_sequences", 1, 2); }, 3);
  EXPECT_NE(error.find("num_sequences is 2 but group 'sequences' holds 3 entries"),
            std::string::npos)
      << error;
  const std::string negative =
      damaged_error([](hid_t f) { put_int_array_attr(f, "num_sequences", 1, -1); });
  EXPECT_NE(negative.find("'num_sequences' = -1 is outside [1, "), std::string::npos) << negative;
}

TEST(HostileAttributes, FixedSizeStringsAreReadWithinTheirSize) {
  const auto put_fixed_string = [](hid_t f, size_t size, const std::string& text) {
    H5Adelete(f, "model_name");
    h5::Handle type(H5Tcopy(H5T_C_S1));
    H5Tset_size(type.get(), size);
    H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
    h5::Handle space(H5Screate(H5S_SCALAR));
    h5::Handle attr(H5Acreate2(f, "model_name", type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
    ASSERT_TRUE(attr.valid());
    std::string buffer(size, '\0');
    buffer.replace(0, std::min(size, text.size()), text.substr(0, size));
    ASSERT_GE(H5Awrite(attr.get(), type.get(), buffer.data()), 0);
  };
  TempDir dir;
  const std::string path = write_tiny(dir, "t.h5");
  {  // exactly full (no terminating zero) and short: both read as written
    h5::Handle f = open_rw(path);
    put_fixed_string(f.get(), 5, "smoll");
  }
  EXPECT_EQ(TraceReader(path).meta().model_name, "smoll");
  {
    h5::Handle f = open_rw(path);
    put_fixed_string(f.get(), 32, "abc");
  }
  EXPECT_EQ(TraceReader(path).meta().model_name, "abc");
  {
    h5::Handle f = open_rw(path);
    put_fixed_string(f.get(), h5::kMaxStringBytes + 1, "x");
  }
  const std::string error = read_error(path);
  EXPECT_NE(
      error.find("declares a string of " + std::to_string(h5::kMaxStringBytes + 1) + " bytes"),
      std::string::npos)
      << error;
}

// --- declared sizes ---------------------------------------------------------------

// Replaces sequence 0's token_ids by a chunked dataset of `n` values that are never written:
// a file of a few KB that declares n tokens.
void declare_tokens(hid_t f, hsize_t n) {
  h5::Handle g(H5Gopen2(f, "sequences/000000", H5P_DEFAULT));
  H5Ldelete(g.get(), "token_ids", H5P_DEFAULT);
  h5::Handle space(H5Screate_simple(1, &n, nullptr));
  h5::Handle create(H5Pcreate(H5P_DATASET_CREATE));
  const hsize_t chunk = 1024;
  H5Pset_chunk(create.get(), 1, &chunk);
  h5::Handle dset(H5Dcreate2(g.get(), "token_ids", H5T_STD_I32LE, space.get(), H5P_DEFAULT,
                             create.get(), H5P_DEFAULT));
  ASSERT_TRUE(dset.valid());
}

TEST(DeclaredSizes, TokenCountBeyondTheLimitIsRefusedBeforeAllocating) {
  const hsize_t huge = hsize_t{1} << 26;
  const std::string error = damaged_error([&](hid_t f) { declare_tokens(f, huge); });
  EXPECT_NE(error.find(std::to_string(huge) + " tokens (at most " +
                       std::to_string(kMaxTraceTokens) + ")"),
            std::string::npos)
      << error;
}

TEST(DeclaredSizes, TokensTheFileDoesNotHoldAreRefused) {
  const hsize_t declared = hsize_t{1} << 20;  // within the limit, but never stored
  const std::string error = damaged_error([&](hid_t f) { declare_tokens(f, declared); });
  EXPECT_NE(error.find("declares " + std::to_string(declared) + " values (" +
                       std::to_string(declared * 4) + " bytes) but the file stores 0 bytes"),
            std::string::npos)
      << error;
}

TEST(DeclaredSizes, LayerDataTheFileDoesNotHoldIsRefused) {
  // q replaced by a dataset of the right shape and type whose chunks were never written.
  const SynthConfig c = synth_preset("tiny");
  const std::string error = damaged_error([&](hid_t f) {
    h5::Handle g(H5Gopen2(f, "sequences/000000", H5P_DEFAULT));
    h5::Handle old(H5Dopen2(g.get(), "q", H5P_DEFAULT));
    h5::Handle type(H5Dget_type(old.get()));
    h5::Handle space(H5Dget_space(old.get()));
    h5::Handle create(H5Dget_create_plist(old.get()));
    old.reset();
    H5Ldelete(g.get(), "q", H5P_DEFAULT);
    h5::Handle dset(
        H5Dcreate2(g.get(), "q", type.get(), space.get(), H5P_DEFAULT, create.get(), H5P_DEFAULT));
    ASSERT_TRUE(dset.valid());
  });
  const size_t bytes = size_t{2} * c.model_layers * c.q_heads * c.tokens * c.head_dim;
  EXPECT_NE(error.find("dataset 'q': declares"), std::string::npos) << error;
  EXPECT_NE(error.find(std::to_string(bytes) + " bytes) but the file stores 0 bytes"),
            std::string::npos)
      << error;
}

// --- checksums -----------------------------------------------------------------------

bool has_filter(hid_t dataset, H5Z_filter_t filter) {
  h5::Handle create(H5Dget_create_plist(dataset));
  for (int i = 0; i < H5Pget_nfilters(create.get()); ++i) {
    unsigned flags = 0;
    size_t n = 0;
    if (H5Pget_filter2(create.get(), i, &flags, &n, nullptr, 0, nullptr, nullptr) == filter) {
      return true;
    }
  }
  return false;
}

TEST(Checksums, EveryTraceDatasetHasFletcher32) {
  TempDir dir;
  const std::string path = write_tiny(dir, "t.h5");
  h5::Handle f = h5::open_file_readonly(path);
  for (const char* name : {"layer_ids", "sliding_window", "sequences/000000/token_ids",
                           "sequences/000000/q", "sequences/000000/k", "sequences/000000/v"}) {
    h5::Handle d(H5Dopen2(f.get(), name, H5P_DEFAULT));
    EXPECT_TRUE(has_filter(d.get(), H5Z_FILTER_FLETCHER32)) << name;
  }
  // The 1.10 format: superblock version 3 (checksummed, as are the object headers).
  H5F_info2_t info{};
  ASSERT_GE(H5Fget_info2(f.get(), &info), 0);
  EXPECT_GE(info.super.version, 2u);
}

TEST(Checksums, DamagedChunkIsReportedWithItsDataset) {
  TempDir dir;
  const std::string path = write_tiny(dir, "t.h5");
  haddr_t address = 0;
  {  // where the first chunk of sequence 0's k lies in the file
    h5::Handle f = h5::open_file_readonly(path);
    h5::Handle d(H5Dopen2(f.get(), "sequences/000000/k", H5P_DEFAULT));
    h5::Handle space(H5Dget_space(d.get()));
    hsize_t offset[4] = {};
    unsigned mask = 0;
    hsize_t size = 0;
    ASSERT_GE(H5Dget_chunk_info(d.get(), space.get(), 0, offset, &mask, &address, &size), 0);
    ASSERT_GT(size, 16u);
  }
  {  // flip one bit of a stored value
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(static_cast<std::streamoff>(address + 10));
    char byte = 0;
    file.read(&byte, 1);
    byte = static_cast<char>(byte ^ 0x01);
    file.seekp(static_cast<std::streamoff>(address + 10));
    file.write(&byte, 1);
  }
  const std::string error = read_error(path);
  EXPECT_NE(error.find("sequence 000000 layer 0 dataset 'k': cannot read data"), std::string::npos)
      << error;
  EXPECT_NE(error.find("Fletcher32 checksum"), std::string::npos) << error;
}

TEST(Checksums, OldFilesWithoutChecksumsAreStillRead) {
  // Written by kvcap's writer before checksums (h5py's default, earliest file format).
  const std::string path =
      std::string(KVSIM_SOURCE_DIR) + "/tests/fuzz/corpus/trace/h5py_v1_no_checksums.h5";
  h5::Handle f = h5::open_file_readonly(path);
  h5::Handle q(H5Dopen2(f.get(), "sequences/000000/q", H5P_DEFAULT));
  ASSERT_FALSE(has_filter(q.get(), H5Z_FILTER_FLETCHER32));
  TraceReader reader(path);
  reader.validate_all_values();
  EXPECT_EQ(reader.read_token_ids(0), (std::vector<int32_t>{1, 2, 3, 4}));
}

// --- values the engine cannot compute with ----------------------------------------------

// The tiny trace in float32, its concatenated q, k, v ([L, heads, T, d]) edited by `edit`.
template <typename Edit>
std::string float32_trace(const TempDir& dir, Edit edit) {
  SynthConfig c = synth_preset("tiny");
  c.dtype = StoredDType::kFloat32;
  const TraceMeta meta = synth_meta(c);
  std::vector<LayerData> layers = synth_sequence(c, 0);
  const size_t L = layers.size();
  const size_t q_size = layers[0].q.size(), kv_size = layers[0].k.size();
  std::vector<float> q, k, v;
  for (const LayerData& layer : layers) {
    q.insert(q.end(), layer.q.begin(), layer.q.end());
    k.insert(k.end(), layer.k.begin(), layer.k.end());
    v.insert(v.end(), layer.v.begin(), layer.v.end());
  }
  EXPECT_EQ(q.size(), L * q_size);
  EXPECT_EQ(k.size(), L * kv_size);
  edit(q, k, v);
  std::vector<int32_t> tokens(c.tokens);
  for (int t = 0; t < c.tokens; ++t) tokens[t] = t;
  const std::string path = dir.file("big.h5");
  TraceWriter writer(path, meta, {StoredDType::kFloat32, 0});
  writer.add_sequence(tokens, c.prompt_len, q, k, v);
  writer.finish();
  return path;
}

// ... with element [0] of layer 0's k set to `value`.
std::string trace_with_key_value(const TempDir& dir, float value) {
  return float32_trace(dir, [&](auto&, auto& k, auto&) { k[0] = value; });
}

// Replays the trace with policies of every kind and expects every /summary value finite.
void expect_finite_results(const TempDir& dir, const std::string& path) {
  TraceReader reader(path);
  reader.validate_all_values();
  const auto runs =
      replay(reader,
             {PolicySpec::parse("full"), PolicySpec::parse("uniform:bits=1"),
              PolicySpec::parse("kivi:bits=2"), PolicySpec::parse("h2o+uniform:bits=4"),
              PolicySpec::parse("minicache"), PolicySpec::parse("mikv:hi_bits=4,lo_bits=2"),
              PolicySpec::parse("snapkv")},
             {});
  for (const RunResult& run : runs) {
    const RunSummary s = summarize(run);
    for (size_t i = 0; i < s.values.size(); ++i) {
      EXPECT_TRUE(std::isfinite(s.values[i])) << run.spec << " " << summary_columns()[i].name;
    }
  }
  write_results(dir.file("r.h5"), reader.meta(), {path, "test", "auto", {}}, runs);
}

TEST(HugeValues, FiniteButOverflowingValueIsRefusedWithTheBound) {
  TempDir dir;
  const std::string error = read_error(trace_with_key_value(dir, 3e38f));
  EXPECT_NE(error.find("too large value (3e+38) at head 0, token 0, channel 0"), std::string::npos)
      << error;
  std::ostringstream bound;  // printed as the reader prints it
  bound << synth_meta(synth_preset("tiny")).value_bound();
  EXPECT_NE(error.find("must be at most " + bound.str() +
                       " = min(65504 / max(2, sqrt(head_dim)), sqrt(FLT_MAX / (4 head_dim"),
            std::string::npos)
      << error;
}

TEST(HugeValues, BoundIsDerivedFromFp16AndFloatRanges) {
  TraceMeta meta = synth_meta(synth_preset("tiny"));
  // The norm of a head vector of values at the bound fits fp16 (and so does any range).
  EXPECT_NEAR(std::sqrt(meta.head_dim) * meta.value_bound(), 65504.0, 1e-9);
  meta.head_dim = 2;
  EXPECT_EQ(2 * meta.value_bound(), 65504.0);
  // With a huge softmax scale, float's range binds: a squared distance of two head vectors
  // at the bound, times the scale, is FLT_MAX (up to rounding).
  meta.attn_scale = 1e30;
  const double bound = meta.value_bound();
  EXPECT_LT(bound, 65504.0 / 2);
  EXPECT_NEAR(4.0 * meta.head_dim * meta.attn_scale * bound * bound / FLT_MAX, 1.0, 1e-12);
}

TEST(HugeValues, ValuesJustBelowTheBoundReplayToFiniteResults) {
  TempDir dir;
  const double bound = synth_meta(synth_preset("tiny")).value_bound();
  expect_finite_results(dir, trace_with_key_value(dir, static_cast<float>(bound * 0.99)));
}

TEST(HugeValues, EveryValueAtTheBoundReplaysToFiniteResults) {
  TempDir dir;
  // The largest float within the bound.
  const float at =
      std::nextafter(static_cast<float>(synth_meta(synth_preset("tiny")).value_bound()), 0.0f);
  std::mt19937 rng(7);
  const auto extreme = [&](std::vector<float>& x) {
    for (float& value : x) value = (rng() & 1) ? at : -at;
  };
  expect_finite_results(dir, float32_trace(dir, [&](auto& q, auto& k, auto& v) {
                          extreme(q);
                          extreme(k);
                          extreme(v);
                        }));
}

TEST(ResultsWriter, RefusesNonFiniteMetrics) {
  TempDir dir;
  const std::string trace = write_tiny(dir, "t.h5");
  TraceReader reader(trace);
  auto runs = replay(reader, {PolicySpec::parse("full"), PolicySpec::parse("uniform:bits=2")}, {});
  ASSERT_GT(runs[1].steps.size(), 3u);
  runs[1].steps[3].rel_err = std::nanf("");
  const std::string out = dir.file("r.h5");
  try {
    write_results(out, reader.meta(), {trace, "test", "auto", {}}, runs);
    FAIL() << "a NaN was written";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "run 1 ('uniform:bits=2'): column 'steps/rel_err' is nan at row 3"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(ResultsWriter, ColumnsAreChecksummed) {
  TempDir dir;
  const std::string trace = write_tiny(dir, "t.h5");
  TraceReader reader(trace);
  const auto runs = replay(reader, {PolicySpec::parse("uniform:bits=2")}, {});
  const std::string out = dir.file("r.h5");
  write_results(out, reader.meta(), {trace, "test", "auto", {}}, runs);
  h5::Handle f = h5::open_file_readonly(out);
  for (const char* name : {"runs/0000/steps/rel_err", "runs/0000/kv/data_bits",
                           "summary/rel_err_mean", "runs/0000/aggregates/mean"}) {
    h5::Handle d(H5Dopen2(f.get(), name, H5P_DEFAULT));
    ASSERT_TRUE(d.valid()) << name;
    EXPECT_TRUE(has_filter(d.get(), H5Z_FILTER_FLETCHER32)) << name;
  }
}

}  // namespace
}  // namespace kvsim
