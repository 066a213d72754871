// Trace format v2 (v1 still read): post-RoPE Q, K, V of a model run, stored in HDF5.
// The schema is documented in docs/trace-format.md; this is its only reader
// and writer on the C++ side.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/base/h5.h"
#include "sim/base/trace_types.h"

namespace kvsim {

inline constexpr const char* kTraceFormatName = "kvsim-trace";
inline constexpr int64_t kTraceFormatVersion = 2;  // written; 1 and 2 are read

// Reads and validates a trace. Construction checks the whole schema (every
// attribute, every dataset's presence and shape); read_layer() checks values.
// Not thread-safe: callers serialise access.
class TraceReader {
 public:
  explicit TraceReader(const std::string& path);
  const TraceMeta& meta() const { return meta_; }
  const std::string& path() const { return path_; }
  int num_sequences() const { return static_cast<int>(sequences_.size()); }
  const SequenceInfo& sequence(int index) const { return sequences_.at(index); }
  // Throws FormatError on NaN/Inf or unreadable (truncated) data.
  LayerData read_layer(int sequence, int slot) const;
  std::vector<int32_t> read_token_ids(int sequence) const;
  // Reads every layer of every sequence once, so that bad values fail before work starts.
  void validate_all_values() const;

  int version() const { return version_; }  // format version of the file (1 or 2)
  // Whether some layer dataset is deflate-compressed: reading a layer then costs a
  // decompression, not only a copy (the replay keeps such layers rather than read them twice).
  bool deflated() const { return deflated_; }

 private:
  void read_rope_v2(hid_t root, const std::string& ctx);
  void rope_theta_by_layer_type_v1(hid_t root, const std::string& ctx);
  static void check_positions(hid_t group, int64_t num_tokens, const std::string& sctx);

  std::string path_;
  h5::Handle file_;
  TraceMeta meta_;
  int version_ = kTraceFormatVersion;
  bool deflated_ = false;
  std::vector<SequenceInfo> sequences_;
};

struct TraceWriteOptions {
  StoredDType dtype = StoredDType::kFloat16;
  int gzip_level = 0;  // 0 = uncompressed, 1..9 = deflate with shuffle
};

// Writes a trace to `<path>.tmp.<pid>` and renames it to `path` on finish().
// A writer destroyed without finish() removes its temporary file.
class TraceWriter {
 public:
  TraceWriter(const std::string& path, TraceMeta meta, TraceWriteOptions options);
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // q: [L, Hq, T, d], k and v: [L, Hkv, T, d] (float32, converted to the stored dtype).
  void add_sequence(const std::vector<int32_t>& token_ids, int64_t prompt_len,
                    const std::vector<float>& q, const std::vector<float>& k,
                    const std::vector<float>& v);
  void finish();

 private:
  std::string path_;
  std::string tmp_path_;
  TraceMeta meta_;
  TraceWriteOptions options_;
  h5::Handle file_;
  int num_sequences_ = 0;
  bool finished_ = false;
};

std::string sequence_group_name(int index);  // "000000"

}  // namespace kvsim
