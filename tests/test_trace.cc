#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "sim/base/fp16.h"
#include "sim/base/h5.h"
#include "test_util.h"
#include "trace/trace.h"

namespace kvsim {
namespace {

using testing::open_rw;
using testing::TempDir;
using testing::write_tiny;

void expect_format_error(const std::string& path, const std::string& fragment) {
  try {
    TraceReader reader(path);
    reader.validate_all_values();
    FAIL() << "expected an error mentioning '" << fragment << "'";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

// Writes the tiny trace, lets `damage` edit the open file, and expects reading
// it to fail with a FormatError mentioning `fragment`.
template <typename Damage>
void expect_damage_detected(const std::string& fragment, Damage damage) {
  TempDir dir;
  const std::string path = write_tiny(dir, "t.h5", StoredDType::kFloat16);
  {
    h5::Handle f = open_rw(path);
    damage(f.get());
  }
  if (::testing::Test::HasFatalFailure()) return;  // the damage itself failed
  expect_format_error(path, fragment);
}

class TraceRoundTrip : public ::testing::TestWithParam<StoredDType> {};

TEST_P(TraceRoundTrip, ReadsBackWhatWasWritten) {
  TempDir dir;
  const StoredDType dtype = GetParam();
  const std::string path = write_tiny(dir, "t.h5", dtype, dtype == StoredDType::kFloat16 ? 4 : 0);
  const SynthConfig c = synth_preset("tiny");
  const auto expected = synth_sequence(c, 0);
  TraceReader reader(path);
  const TraceMeta& m = reader.meta();
  EXPECT_EQ(m.model_name, "kvsim-synthetic");
  EXPECT_EQ(m.num_layers(), c.model_layers);
  EXPECT_EQ(m.num_q_heads, c.q_heads);
  EXPECT_EQ(m.num_kv_heads, c.kv_heads);
  EXPECT_EQ(m.head_dim, c.head_dim);
  EXPECT_EQ(m.dtype, dtype);
  EXPECT_DOUBLE_EQ(m.attn_scale, 1.0 / std::sqrt(c.head_dim));
  EXPECT_FALSE(m.trace_id.empty());
  ASSERT_EQ(reader.num_sequences(), 1);
  EXPECT_EQ(reader.sequence(0).prompt_len, c.prompt_len);
  EXPECT_EQ(reader.sequence(0).num_tokens, c.tokens);
  EXPECT_EQ(reader.read_token_ids(0).size(), static_cast<size_t>(c.tokens));
  for (int slot = 0; slot < m.num_layers(); ++slot) {
    const LayerData got = reader.read_layer(0, slot);
    ASSERT_EQ(got.k.size(), expected[slot].k.size());
    for (size_t i = 0; i < got.k.size(); ++i) {
      float want = expected[slot].k[i];
      if (dtype == StoredDType::kFloat16) want = round_to_half(want);
      if (dtype == StoredDType::kBFloat16) want = bf16_bits_to_float(float_to_bf16_bits(want));
      ASSERT_EQ(got.k[i], want) << "slot " << slot << " index " << i;
    }
    ASSERT_EQ(got.q.size(), expected[slot].q.size());
  }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, TraceRoundTrip,
                         ::testing::Values(StoredDType::kFloat16, StoredDType::kBFloat16,
                                           StoredDType::kFloat32));

TEST(Trace, OneLayerHeadIsOneChunk) {
  TempDir dir;
  const std::string path = write_tiny(dir, "t.h5", StoredDType::kFloat16);
  h5::Handle file = h5::open_file_readonly(path);
  h5::Handle dset = h5::open_dataset(file.get(), "sequences/000000/k", "test");
  h5::Handle plist(H5Dget_create_plist(dset.get()));
  hsize_t chunk[4];
  ASSERT_EQ(H5Pget_chunk(plist.get(), 4, chunk), 4);
  const SynthConfig c = synth_preset("tiny");
  EXPECT_EQ(chunk[0], 1u);
  EXPECT_EQ(chunk[1], 1u);
  EXPECT_EQ(chunk[2], static_cast<hsize_t>(c.tokens));
  EXPECT_EQ(chunk[3], static_cast<hsize_t>(c.head_dim));
}

// The replay keeps a deflated trace's checked layers and reads an uncompressed one's again
// (sim/engine.cc): the reader says which it is, and both read the same values.
TEST(Trace, KnowsWhetherItsLayersAreDeflated) {
  TempDir dir;
  SynthConfig c = synth_preset("tiny");
  write_synth_trace(dir.file("plain.h5"), c);
  c.gzip_level = 4;
  write_synth_trace(dir.file("deflated.h5"), c);
  const TraceReader plain(dir.file("plain.h5")), deflated(dir.file("deflated.h5"));
  EXPECT_FALSE(plain.deflated());
  EXPECT_TRUE(deflated.deflated());
  EXPECT_EQ(plain.read_layer(0, 1).k, deflated.read_layer(0, 1).k);
}

TEST(Trace, LayerSubsetKeepsOriginalIndices) {
  TempDir dir;
  SynthConfig c = synth_preset("tiny");
  c.model_layers = 6;
  c.keep_layers = {1, 4, 5};
  const std::string path = dir.file("subset.h5");
  write_synth_trace(path, c);
  TraceReader reader(path);
  EXPECT_EQ(reader.meta().num_model_layers, 6);
  EXPECT_EQ(reader.meta().layer_ids, (std::vector<int>{1, 4, 5}));
  EXPECT_EQ(reader.meta().slot_of_layer(4), 1);
  EXPECT_EQ(reader.meta().slot_of_layer(2), -1);
  // Stored layer 4 equals layer 4 of the full generation (depth chains are kept).
  SynthConfig all = c;
  all.keep_layers.clear();
  const auto full = synth_sequence(all, 0);
  const LayerData got = reader.read_layer(0, 1);
  EXPECT_EQ(got.k[100], round_to_half(full[4].k[100]));
}

TEST(TraceErrors, MissingFile) { EXPECT_THROW(TraceReader("/nonexistent/trace.h5"), IoError); }

TEST(TraceErrors, NotHdf5) {
  TempDir dir;
  std::ofstream(dir.file("x.h5")) << "this is not an HDF5 file";
  expect_format_error(dir.file("x.h5"), "not a readable HDF5 file");
}

TEST(TraceErrors, Truncated) {
  TempDir dir;
  const std::string path = write_tiny(dir, "t.h5", StoredDType::kFloat16);
  const auto size = std::filesystem::file_size(path);
  for (double frac : {0.5, 0.9, 0.995}) {
    const std::string cut = dir.file("cut.h5");
    std::filesystem::copy_file(path, cut, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(cut, static_cast<uintmax_t>(size * frac));
    EXPECT_THROW(
        {
          TraceReader reader(cut);
          reader.validate_all_values();
        },
        FormatError)
        << "fraction " << frac;
  }
}

TEST(TraceErrors, MissingAttribute) {
  expect_damage_detected("missing attribute 'head_dim'",
                         [](hid_t f) { ASSERT_GE(H5Adelete(f, "head_dim"), 0); });
}

TEST(TraceErrors, UnknownVersion) {
  expect_damage_detected("unsupported trace format version 3",
                         [](hid_t f) { h5::write_attr(f, "version", int64_t{3}); });
}

TEST(TraceErrors, WrongFormatName) {
  expect_damage_detected("expected 'kvsim-trace'", [](hid_t f) {
    h5::write_attr(f, "format", std::string("something-else"));
  });
}

TEST(TraceErrors, MissingDataset) {
  expect_damage_detected("missing dataset 'v'", [](hid_t f) {
    ASSERT_GE(H5Ldelete(f, "sequences/000000/v", H5P_DEFAULT), 0);
  });
}

TEST(TraceErrors, ShapeMismatch) {
  expect_damage_detected("has shape", [](hid_t f) {
    ASSERT_GE(H5Ldelete(f, "sequences/000000/token_ids", H5P_DEFAULT), 0);
    h5::Handle g(H5Gopen2(f, "sequences/000000", H5P_DEFAULT));
    h5::write_vector(g.get(), "token_ids", std::vector<int32_t>(80, 1));  // 80 != 96 tokens
  });
}

TEST(TraceErrors, LayerIdsDisagreeWithData) {
  expect_damage_detected("has shape", [](hid_t f) {
    ASSERT_GE(H5Ldelete(f, "layer_ids", H5P_DEFAULT), 0);
    ASSERT_GE(H5Ldelete(f, "sliding_window", H5P_DEFAULT), 0);
    h5::write_vector(f, "layer_ids", std::vector<int32_t>{0, 1, 2});
    h5::write_vector(f, "sliding_window", std::vector<int32_t>{0, 0, 0});
    for (const char* rope : {"rope_theta_by_layer", "rope_factor_by_layer"}) {
      ASSERT_GE(H5Ldelete(f, rope, H5P_DEFAULT), 0);
      h5::write_vector(f, rope, std::vector<double>{1, 1, 1});
    }
  });
}

TEST(TraceErrors, NanAndInf) {
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    TempDir dir;
    const std::string path = write_tiny(dir, "t.h5", StoredDType::kFloat32);
    {
      h5::Handle f = open_rw(path);
      h5::Handle d(H5Dopen2(f.get(), "sequences/000000/k", H5P_DEFAULT));
      h5::Handle space(H5Dget_space(d.get()));
      const hsize_t start[4] = {2, 1, 17, 3}, count[4] = {1, 1, 1, 1};
      H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
      const hsize_t one = 1;
      h5::Handle mem(H5Screate_simple(1, &one, nullptr));
      ASSERT_GE(H5Dwrite(d.get(), H5T_NATIVE_FLOAT, mem.get(), space.get(), H5P_DEFAULT, &bad), 0);
    }
    TraceReader reader(path);  // schema is fine
    EXPECT_NO_THROW(reader.read_layer(0, 1));
    try {
      reader.read_layer(0, 2);
      FAIL() << "NaN/Inf not detected";
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("non-finite"), std::string::npos) << msg;
      EXPECT_NE(msg.find("token 17"), std::string::npos) << msg;
    }
  }
}

TEST(TraceErrors, BadPromptLength) {
  expect_damage_detected("prompt_len 1000", [](hid_t f) {
    h5::Handle g(H5Gopen2(f, "sequences/000000", H5P_DEFAULT));
    h5::write_attr(g.get(), "prompt_len", int64_t{1000});
  });
}

TEST(TraceWriter, NoTemporaryLeftOnFailure) {
  TempDir dir;
  {
    TraceMeta meta = synth_meta(synth_preset("tiny"));
    TraceWriter writer(dir.file("w.h5"), meta, {});
    EXPECT_THROW(writer.add_sequence({1, 2, 3}, 2, {}, {}, {}), ConfigError);
  }  // destroyed without finish()
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace kvsim
