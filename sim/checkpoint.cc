#include "sim/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "sim/base/errors.h"

namespace kvsim {

uint64_t fnv1a64(const void* data, size_t size, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed;
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

void ByteWriter::put_string(const std::string& s) {
  put<uint64_t>(s.size());
  bytes_.insert(bytes_.end(), s.begin(), s.end());
}

void ByteReader::need(size_t n) const {
  if (size_ - at_ < n) throw FormatError("truncated record payload");
}

std::string ByteReader::get_string() {
  const uint64_t n = get<uint64_t>();
  need(n);
  std::string s(data_ + at_, n);
  at_ += n;
  return s;
}

// ---------------------------------------------------------------------------
namespace {

template <typename Record>
void fingerprint_columns(uint64_t& hash, Columns<Record> columns) {
  for (const Column<Record>& c : columns) {
    hash = fnv1a64(c.name, std::strlen(c.name) + 1, hash);  // with the NUL: names stay apart
    const uint8_t type = static_cast<uint8_t>(c.type());
    hash = fnv1a64(&type, 1, hash);
  }
  const uint8_t end = 0xff;
  hash = fnv1a64(&end, 1, hash);
}

// The cells of each record in schema order, each as its own type (strings as
// put_string writes them).
template <typename Record>
void put_records(ByteWriter& out, const std::vector<Record>& records, Columns<Record> columns) {
  out.put<uint64_t>(records.size());
  for (const Record& r : records) {
    for (const Column<Record>& c : columns) {
      visit_cell(c, r, [&](const auto& v) {
        if constexpr (std::is_same_v<std::decay_t<decltype(v)>, std::string>) {
          out.put_string(v);
        } else {
          out.put(v);
        }
      });
    }
  }
}

template <typename Record>
void get_records(ByteReader& in, std::vector<Record>& records, Columns<Record> columns,
                 const char* what) {
  size_t min_record_bytes = 0;  // a string takes at least its length field
  for (const Column<Record>& c : columns) {
    visit_cell(c, Record{}, [&](const auto& v) {
      min_record_bytes +=
          std::is_same_v<std::decay_t<decltype(v)>, std::string> ? sizeof(uint64_t) : sizeof(v);
    });
  }
  const uint64_t n = in.get<uint64_t>();
  if (n > in.remaining() / std::max<size_t>(min_record_bytes, 1)) {
    throw FormatError(std::string("bad ") + what + " count");
  }
  records.resize(n);
  for (Record& r : records) {
    for (const Column<Record>& c : columns) {
      visit_cell(c, r, [&](auto& v) {
        using T = std::remove_cvref_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          v = in.get_string();
        } else {
          v = in.get<T>();
        }
      });
    }
  }
}

}  // namespace

uint64_t record_columns_fingerprint() {
  static const uint64_t hash = [] {
    uint64_t h = fnv1a64(nullptr, 0);
    fingerprint_columns<StepRecord>(h, kStepColumns);
    fingerprint_columns<KvRecord>(h, kKvColumns);
    // The fields after the records (a new one changes the fingerprint, so that records of an
    // older kvsim are refused, not misread).
    const char kTrailer[] = "counters,stage_acted";
    h = fnv1a64(kTrailer, sizeof kTrailer, h);
    return h;
  }();
  return hash;
}

void serialize_unit(ByteWriter& out, const UnitKey& key, const RunResult& part) {
  out.put(key.trace);
  out.put(key.sequence);
  out.put(key.group);
  out.put(key.config);
  out.put(record_columns_fingerprint());
  out.put(part.seconds);
  put_records<StepRecord>(out, part.steps, kStepColumns);
  put_records<KvRecord>(out, part.kv, kKvColumns);
  out.put<uint64_t>(part.counters.size());
  for (const auto& [name, value] : part.counters) {
    out.put_string(name);
    out.put(value);
  }
  out.put<uint64_t>(part.stage_acted.size());
  for (int64_t shards : part.stage_acted) out.put(shards);
}

UnitKey deserialize_unit_key(ByteReader& in) {
  UnitKey key;
  key.trace = in.get<int32_t>();
  key.sequence = in.get<int32_t>();
  key.group = in.get<int32_t>();
  key.config = in.get<int32_t>();
  if (in.get<uint64_t>() != record_columns_fingerprint()) {
    throw FormatError("the records have other columns (written by another kvsim version)");
  }
  return key;
}

void deserialize_unit(ByteReader& in, UnitKey& key, RunResult& part) {
  key = deserialize_unit_key(in);
  part = RunResult{};
  part.seconds = in.get<double>();
  get_records<StepRecord>(in, part.steps, kStepColumns, "step record");
  get_records<KvRecord>(in, part.kv, kKvColumns, "kv record");
  const uint64_t n_counters = in.get<uint64_t>();
  for (uint64_t i = 0; i < n_counters; ++i) {
    std::string name = in.get_string();
    part.counters[name] = in.get<double>();
  }
  const uint64_t n_stages = in.get<uint64_t>();
  if (n_stages > in.remaining() / sizeof(int64_t)) throw FormatError("bad stage count");
  part.stage_acted.resize(n_stages);
  for (int64_t& shards : part.stage_acted) shards = in.get<int64_t>();
}

// ---------------------------------------------------------------------------
CheckpointWriter::CheckpointWriter(const std::string& path, uint64_t sweep_hash,
                                   CheckpointSync sync)
    : path_(path), sweep_hash_(sweep_hash), mode_(sync) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw IoError("cannot open checkpoint file '" + path + "': " + std::strerror(errno));
  }
  // Make the new file's directory entry durable too.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
  if (mode_ == CheckpointSync::kBackground) syncer_ = std::thread([this] { sync_loop(); });
}

CheckpointWriter::~CheckpointWriter() {
  if (syncer_.joinable()) {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    syncer_.join();
  }
  if (fd_ >= 0) ::close(fd_);
}

void CheckpointWriter::sync_loop() {
  std::unique_lock lock(mutex_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || written_ > synced_; });
    if (written_ == synced_) break;  // stopping, nothing left
    const uint64_t target = written_;
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = ::fsync(fd_);
    const int err = errno;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    lock.lock();
    fsync_seconds_ += seconds;
    if (rc != 0 && error_.empty()) {
      error_ = "cannot fsync checkpoint '" + path_ + "': " + std::strerror(err);
    }
    synced_ = target;
    cv_.notify_all();
    // Coalesce: at most one fsync per kSyncInterval, unless stopping or flushing
    // (fsync and write() of the same file contend).
    cv_.wait_for(lock, kSyncInterval, [&] { return stop_ || flush_; });
  }
}

void CheckpointWriter::sync() {
  if (mode_ == CheckpointSync::kEachRecord) return;
  std::unique_lock lock(mutex_);
  flush_ = true;
  cv_.notify_all();
  cv_.wait(lock, [&] { return synced_ == written_; });
  flush_ = false;
  if (!error_.empty()) throw IoError(error_);
}

double CheckpointWriter::fsync_seconds() const {
  std::lock_guard lock(mutex_);
  return fsync_seconds_;
}

std::vector<char> CheckpointWriter::make_record(const UnitKey& key, const RunResult& part) const {
  ByteWriter w;
  w.put(kCheckpointMagic);
  w.put(kCheckpointVersion);
  w.put(sweep_hash_);
  w.put<uint64_t>(0);  // length, patched below
  w.put<uint64_t>(0);  // checksum, patched below
  serialize_unit(w, key, part);
  std::vector<char>& bytes = w.bytes();
  const uint64_t length = bytes.size() - kCheckpointHeaderBytes;
  std::memcpy(bytes.data() + 16, &length, 8);
  uint64_t sum = fnv1a64(bytes.data() + 8, 16);
  sum = fnv1a64(bytes.data() + kCheckpointHeaderBytes, length, sum);
  std::memcpy(bytes.data() + 24, &sum, 8);
  return std::move(bytes);
}

void CheckpointWriter::append_record(const std::vector<char>& record) {
  if (mode_ == CheckpointSync::kBackground) {
    std::lock_guard lock(mutex_);
    if (!error_.empty()) throw IoError(error_);
  }
  size_t done = 0;
  while (done < record.size()) {
    const ssize_t n = ::write(fd_, record.data() + done, record.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError("cannot write checkpoint '" + path_ + "': " + std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  if (mode_ == CheckpointSync::kEachRecord) {
    const auto t0 = std::chrono::steady_clock::now();
    if (::fsync(fd_) != 0) {
      throw IoError("cannot fsync checkpoint '" + path_ + "': " + std::strerror(errno));
    }
    std::lock_guard lock(mutex_);
    fsync_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return;
  }
  {
    std::lock_guard lock(mutex_);
    ++written_;
  }
  cv_.notify_all();
}

// ---------------------------------------------------------------------------
std::string checkpoint_file_name(int attempt, int rank) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "attempt-%04d.rank-%06d.ckpt", attempt, rank);
  return buf;
}

void scan_checkpoint_bytes(const std::vector<char>& bytes, uint64_t sweep_hash, bool load_payloads,
                           CheckpointScan& scan) {
  size_t at = 0;
  while (at < bytes.size()) {
    const size_t left = bytes.size() - at;
    if (left < kCheckpointHeaderBytes) {
      ++scan.torn_files;
      return;
    }
    const char* h = bytes.data() + at;
    uint32_t magic, version;
    uint64_t hash, length, sum;
    std::memcpy(&magic, h, 4);
    std::memcpy(&version, h + 4, 4);
    std::memcpy(&hash, h + 8, 8);
    std::memcpy(&length, h + 16, 8);
    std::memcpy(&sum, h + 24, 8);
    if (magic != kCheckpointMagic || version != kCheckpointVersion ||
        length > left - kCheckpointHeaderBytes) {
      ++scan.torn_files;
      return;
    }
    const char* payload = h + kCheckpointHeaderBytes;
    if (fnv1a64(payload, length, fnv1a64(h + 8, 16)) != sum) {
      ++scan.torn_files;
      return;
    }
    at += kCheckpointHeaderBytes + length;
    if (hash != sweep_hash) {
      if (scan.foreign_records++ == 0) scan.foreign_hash = hash;
      continue;
    }
    ByteReader in(payload, length);
    CheckpointUnit unit;
    if (load_payloads) {
      deserialize_unit(in, unit.key, unit.part);
    } else {
      unit.key = deserialize_unit_key(in);
    }
    ++scan.records;
    if (!scan.keys.insert(unit.key).second) {
      ++scan.duplicates;
      continue;
    }
    scan.units.push_back(std::move(unit));
  }
}

CheckpointScan scan_checkpoints(const std::string& dir, uint64_t sweep_hash, bool load_payloads) {
  namespace fs = std::filesystem;
  CheckpointScan scan;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return scan;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".ckpt") files.push_back(entry.path());
  }
  if (ec) throw IoError("cannot list checkpoint directory '" + dir + "': " + ec.message());
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    int attempt = 0, rank = 0;
    if (std::sscanf(file.filename().c_str(), "attempt-%d.rank-%d.ckpt", &attempt, &rank) == 2) {
      scan.last_attempt = std::max(scan.last_attempt, attempt);
    }
    std::ifstream in(file, std::ios::binary);
    if (!in) throw IoError("cannot read checkpoint file '" + file.string() + "'");
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ++scan.files;
    try {
      scan_checkpoint_bytes(bytes, sweep_hash, load_payloads, scan);
    } catch (const FormatError& e) {
      // A record whose checksum matched but whose payload does not parse: written
      // by an incompatible kvsim. Refuse rather than guess.
      throw FormatError("checkpoint file '" + file.string() + "' has a malformed record (" +
                        e.what() + ")");
    }
  }
  return scan;
}

}  // namespace kvsim
