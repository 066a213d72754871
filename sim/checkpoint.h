// Sweep checkpoints: every rank appends each finished unit's partial result to
// its own file, one record per unit, and fsyncs after each record, so a killed
// job loses at most the units in flight. See docs/sweeps.md.
//
// Record layout (little-endian, as written by x86-64/aarch64 hosts):
//   0  magic       "KVSC"
//   4  version     u32 = 2
//   8  sweep_hash  u64   identity of the sweep (specs, traces, measure, seed)
//  16  length      u64   payload bytes
//  24  checksum    u64   FNV-1a 64 of bytes 8..23 and the payload
//  32  payload     the unit key and its RunResult (serialize_unit)
// A record cut short (kill -9 mid-write) or failing its checksum ends the file:
// it and anything after it are ignored.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "sim/engine.h"

namespace kvsim {

// FNV-1a, 64 bit. `seed` chains calls.
uint64_t fnv1a64(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ull);

// Byte buffers for checkpoint records and the MPI gather.
class ByteWriter {
 public:
  template <typename T>
  void put(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    const size_t at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    std::memcpy(bytes_.data() + at, &value, sizeof(T));
  }
  void put_string(const std::string& s);
  const std::vector<char>& bytes() const { return bytes_; }
  std::vector<char>& bytes() { return bytes_; }

 private:
  std::vector<char> bytes_;
};

class ByteReader {
 public:
  ByteReader(const char* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    need(sizeof(T));
    T value;
    std::memcpy(&value, data_ + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }
  std::string get_string();
  bool done() const { return at_ == size_; }
  size_t remaining() const { return size_ - at_; }
  // Throws FormatError if fewer than n bytes remain.
  void need(size_t n) const;

 private:
  const char* data_;
  size_t size_;
  size_t at_ = 0;
};

// Identifies a unit within one sweep: trace index in the sweep, the trace's
// sequence index, the index of the layer group in that trace's
// unit_layer_groups(), and the config index in the expanded grid.
struct UnitKey {
  int32_t trace = 0, sequence = 0, group = 0, config = 0;
  bool operator==(const UnitKey&) const = default;
  auto operator<=>(const UnitKey&) const = default;
};

// Identity of the record columns (names and types of kStepColumns and
// kKvColumns, sim/records.h) and of the fields after them: a payload of records with
// other columns is refused.
uint64_t record_columns_fingerprint();

// The unit's key, record_columns_fingerprint(), and its partial result
// (seconds, then each record's cells in schema order, then the counters and the stage
// activity, RunResult::stage_acted), bit-exact.
void serialize_unit(ByteWriter& out, const UnitKey& key, const RunResult& part);
// Throws FormatError on a malformed payload or one of other record columns.
void deserialize_unit(ByteReader& in, UnitKey& key, RunResult& part);
// Reads only the key (and checks the fingerprint); throws FormatError.
UnitKey deserialize_unit_key(ByteReader& in);

inline constexpr uint32_t kCheckpointMagic = 0x4353564bu;  // "KVSC" in file byte order
// 2: the payload carries record_columns_fingerprint() after the key.
inline constexpr uint32_t kCheckpointVersion = 2;
inline constexpr size_t kCheckpointHeaderBytes = 32;

// One finished unit read back from a checkpoint.
struct CheckpointUnit {
  UnitKey key;
  RunResult part;
};

// When a record is fsynced. Either way it is handed to the kernel with one
// write() before append returns, so a killed process (kill -9) loses no
// finished unit; fsync protects against a machine crash.
enum class CheckpointSync {
  kEachRecord,  // fsync inside append(), before it returns
  kBackground,  // fsync by a background thread, at most kSyncInterval after each write()
};
inline constexpr std::chrono::milliseconds kSyncInterval{50};

// Appends records to one rank's checkpoint file (created, never truncated).
class CheckpointWriter {
 public:
  // Throws IoError.
  CheckpointWriter(const std::string& path, uint64_t sweep_hash,
                   CheckpointSync sync = CheckpointSync::kEachRecord);
  ~CheckpointWriter();  // waits for the last fsync
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  // Builds a whole record (header + payload) for `append_record`.
  std::vector<char> make_record(const UnitKey& key, const RunResult& part) const;
  // One write() of the whole record, then fsync (see CheckpointSync). Throws
  // IoError, also for a background fsync that failed earlier. Not thread-safe.
  void append_record(const std::vector<char>& record);
  void append(const UnitKey& key, const RunResult& part) { append_record(make_record(key, part)); }
  // Waits until every record written so far is fsynced; throws IoError.
  void sync();
  const std::string& path() const { return path_; }
  double fsync_seconds() const;  // time spent in fsync (either mode)

 private:
  void sync_loop();
  std::string path_;
  uint64_t sweep_hash_;
  CheckpointSync mode_;
  int fd_ = -1;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  uint64_t written_ = 0, synced_ = 0;
  bool stop_ = false, flush_ = false;
  std::string error_;
  double fsync_seconds_ = 0;
  std::thread syncer_;
};

// What a scan of a checkpoint directory found.
struct CheckpointScan {
  std::vector<CheckpointUnit> units;  // valid records of this sweep, first copy of each key
  int files = 0;                      // checkpoint files read
  int64_t records = 0;                // valid records of this sweep (duplicates included)
  int64_t duplicates = 0;             // valid records of a key seen before (ignored)
  int64_t torn_files = 0;             // files ending in a torn or corrupt record (tail ignored)
  int64_t foreign_records = 0;        // valid records of another sweep
  uint64_t foreign_hash = 0;          // the first foreign sweep hash seen
  int last_attempt = 0;               // highest attempt number among the file names
  std::set<UnitKey> keys;             // keys of `units`
};

// "attempt-0001.rank-000003.ckpt"
std::string checkpoint_file_name(int attempt, int rank);

// Reads every "*.ckpt" file of `dir` in name order (a missing dir is empty).
// With `load_payloads` false the RunResults are left empty (keys only).
// Throws IoError when a file cannot be read.
CheckpointScan scan_checkpoints(const std::string& dir, uint64_t sweep_hash, bool load_payloads);

// Parses the records of one file's bytes (exposed for tests); appends to `scan`.
void scan_checkpoint_bytes(const std::vector<char>& bytes, uint64_t sweep_hash, bool load_payloads,
                           CheckpointScan& scan);

}  // namespace kvsim
