// Thin RAII layer over the HDF5 C API. Every handle is owned by an object and
// every negative herr_t/hid_t becomes an exception naming the operation.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sim/base/errors.h"

namespace kvsim::h5 {

// Silences HDF5's own error-stack printing; kvsim reports errors itself.
void silence_hdf5_errors();

// Bounds on what a file may declare before kvsim allocates for it (docs/reliability.md).
inline constexpr size_t kMaxStringBytes = 1 << 16;          // one string attribute or cell
inline constexpr int64_t kMaxAttrStrings = 1 << 20;         // strings in one attribute
inline constexpr uint64_t kMaxVectorElements = 1ull << 31;  // values in one 1-D dataset
inline constexpr long double kMaxDeflateRatio = 1032;       // deflate's largest ratio
inline constexpr uint64_t kVectorChunkElements = 1 << 16;   // chunk of a written 1-D dataset

// The innermost message of HDF5's error stack; for a failed system call, its reason
// (e.g. "No space left on device"). "" when the stack is empty.
std::string last_error_detail();
// `what`, followed by ": <last_error_detail()>" when there is one.
std::string with_detail(const std::string& what);

// Owns one hid_t and closes it with the matching H5*close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept : id_(other.id_) { other.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& other) noexcept;
  ~Handle() { reset(); }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  // Gives up ownership without closing.
  hid_t release() {
    const hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Wraps a hid_t-returning call: throws `Error` with `what` when it fails.
template <typename ErrorT = IoError>
Handle checked(hid_t id, const std::string& what) {
  if (id < 0) throw ErrorT(what);
  return Handle(id);
}
void check(herr_t status, const std::string& what);

// Files are created in the HDF5 1.10 format (object headers, chunk indexes and heaps with
// checksums); `close_file` closes one and throws IoError with the system's reason (e.g.
// "No space left on device") when its data cannot be written. A writer closes its file with
// close_file before it renames it; a file handle dropped on an error path is closed too,
// and emptied when its close fails, so that HDF5 never keeps a half-closed file.
Handle create_file(const std::string& path);
void close_file(Handle& file, const std::string& path);
Handle open_file_readonly(const std::string& path);  // throws FormatError on a corrupt file
bool exists(hid_t location, const std::string& name);

Handle create_group(hid_t location, const std::string& name);
Handle open_group(hid_t location, const std::string& name, const std::string& context);
Handle open_dataset(hid_t location, const std::string& name, const std::string& context);

// The binary16 file type (HDF5 1.10 has no predefined one; h5py reads it as float16).
Handle float16_type();

// --- attributes -------------------------------------------------------------
void write_attr(hid_t obj, const std::string& name, const std::string& value);
void write_attr(hid_t obj, const std::string& name, int64_t value);
void write_attr(hid_t obj, const std::string& name, double value);
// Single-value attributes: a scalar or a 1-element array of the right class (FormatError
// otherwise). Strings are bounded by kMaxStringBytes; integers are at most 64 bits.
std::string read_attr_string(hid_t obj, const std::string& name, const std::string& context);
int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& context);
// The same, and the value must lie in [min, max].
int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& context, int64_t min,
                      int64_t max);
double read_attr_double(hid_t obj, const std::string& name, const std::string& context);
bool has_attr(hid_t obj, const std::string& name);
// 1-D array of variable-length UTF-8 strings (replaces an attribute of that name).
void write_attr(hid_t obj, const std::string& name, const std::vector<std::string>& values);
// A string attribute, scalar or 1-D, as a list.
std::vector<std::string> read_attr_strings(hid_t obj, const std::string& name,
                                           const std::string& context);

// --- datasets ---------------------------------------------------------------
std::vector<hsize_t> dataset_shape(hid_t dataset);
// Throws FormatError unless the file stores enough bytes for `elements` values of the
// dataset (all of them; 1/kMaxDeflateRatio when deflated) and uses only the filters kvsim
// writes, so that no declared size is allocated for that the file cannot hold.
void check_storage(hid_t dataset, hsize_t elements, const std::string& context);

// 1-D datasets (tables are groups of these); numeric ones chunked, with Fletcher-32.
void write_vector(hid_t location, const std::string& name, const std::vector<int32_t>& values);
void write_vector(hid_t location, const std::string& name, const std::vector<int64_t>& values);
void write_vector(hid_t location, const std::string& name, const std::vector<float>& values);
void write_vector(hid_t location, const std::string& name, const std::vector<double>& values);
void write_vector(hid_t location, const std::string& name, const std::vector<std::string>& values);
// A 1-D dataset converted to T: int32_t, int64_t, float, double or std::string.
// Throws FormatError when it is missing, not 1-D, of the wrong class (integers from
// floats), out of T's range, larger than kMaxVectorElements or the file, or unreadable
// (a Fletcher-32 mismatch names the dataset).
template <typename T>
std::vector<T> read_vector(hid_t location, const std::string& name, const std::string& context);
inline std::vector<int32_t> read_int32_vector(hid_t location, const std::string& name,
                                              const std::string& context) {
  return read_vector<int32_t>(location, name, context);
}

}  // namespace kvsim::h5
