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

Handle create_file(const std::string& path);
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
std::string read_attr_string(hid_t obj, const std::string& name, const std::string& context);
int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& context);
double read_attr_double(hid_t obj, const std::string& name, const std::string& context);
bool has_attr(hid_t obj, const std::string& name);
// 1-D array of variable-length UTF-8 strings (replaces an attribute of that name).
void write_attr(hid_t obj, const std::string& name, const std::vector<std::string>& values);
// A string attribute, scalar or 1-D, as a list.
std::vector<std::string> read_attr_strings(hid_t obj, const std::string& name,
                                           const std::string& context);

// --- datasets ---------------------------------------------------------------
std::vector<hsize_t> dataset_shape(hid_t dataset);

// 1-D datasets (tables are groups of these).
void write_vector(hid_t location, const std::string& name, const std::vector<int32_t>& values);
void write_vector(hid_t location, const std::string& name, const std::vector<int64_t>& values);
void write_vector(hid_t location, const std::string& name, const std::vector<float>& values);
void write_vector(hid_t location, const std::string& name, const std::vector<double>& values);
void write_vector(hid_t location, const std::string& name, const std::vector<std::string>& values);
// A 1-D dataset converted to T: int32_t, int64_t, float, double or std::string.
// Throws FormatError when it is missing, not 1-D or unreadable.
template <typename T>
std::vector<T> read_vector(hid_t location, const std::string& name, const std::string& context);
inline std::vector<int32_t> read_int32_vector(hid_t location, const std::string& name,
                                              const std::string& context) {
  return read_vector<int32_t>(location, name, context);
}

}  // namespace kvsim::h5
