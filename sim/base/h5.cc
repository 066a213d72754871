#include "sim/base/h5.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <type_traits>

namespace kvsim::h5 {

void silence_hdf5_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

namespace {

// Collects the description of the innermost error of HDF5's error stack.
herr_t keep_innermost(unsigned depth, const H5E_error2_t* error, void* out) {
  if (depth == 0 && error->desc) *static_cast<std::string*>(out) = error->desc;
  return 0;
}

// HDF5's exit handler would close, and so touch, a file that kvsim deliberately left open
// after a failed write (close_file_id); kvsim closes every file itself.
[[maybe_unused]] const bool kNoLibraryExitHandler = [] {
  H5dont_atexit();
  return true;
}();

// Points the file's descriptor (POSIX driver) at an anonymous in-memory file, so that the
// rest of a failed flush can complete (into memory) and the file can be closed. Linux only.
bool redirect_writes_to_memory(hid_t id) {
#ifdef __linux__
  void* handle = nullptr;
  if (H5Fget_vfd_handle(id, H5P_DEFAULT, &handle) < 0 || handle == nullptr) return false;
  const int fd = *static_cast<int*>(handle);
  const int memory = ::memfd_create("kvsim-discarded-hdf5", 0);
  if (memory < 0) return false;
  const bool redirected = ::dup2(memory, fd) == fd;
  ::close(memory);
  return redirected;
#else
  (void)id;
  return false;
#endif
}

// Closes a file id. HDF5 1.10 destroys a file whose close fails (its last flush cannot write,
// e.g. on a full disk) but keeps its id, and the library's later cleanup (at exit, or at
// MPI_Finalize) then crashes on it. So a file is flushed first and closed only once the flush
// succeeded. When the flush fails, the file is being discarded (the caller removes it): its
// descriptor is pointed at an in-memory file, the flush completes there and the file closes.
// If even that fails, the file stays open until the process ends (no exit handler runs).
// Returns the first failure's reason ("" = written and closed).
std::string close_file_id(hid_t id) {
  std::string why;
  if (H5Fflush(id, H5F_SCOPE_LOCAL) < 0) {
    why = last_error_detail();
    if (why.empty()) why = "cannot write the file";
    if (!redirect_writes_to_memory(id) || H5Fflush(id, H5F_SCOPE_LOCAL) < 0) return why;
  }
  if (H5Fclose(id) < 0 && why.empty()) {
    why = last_error_detail();
    if (why.empty()) why = "cannot close the file";
  }
  return why;
}

}  // namespace

std::string last_error_detail() {
  std::string detail;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, &detail);
  // The POSIX driver's messages end with "..., error message = '<strerror>', ..."; keep that.
  const std::string marker = "error message = '";
  if (const size_t at = detail.find(marker); at != std::string::npos) {
    const size_t start = at + marker.size();
    const size_t end = detail.find('\'', start);
    return detail.substr(start, end == std::string::npos ? std::string::npos : end - start);
  }
  return detail;
}

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    other.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Handle::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      (void)close_file_id(id_);
      break;
    case H5I_GROUP:
      H5Gclose(id_);
      break;
    case H5I_DATASET:
      H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      H5Tclose(id_);
      break;
    case H5I_ATTR:
      H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      H5Pclose(id_);
      break;
    default:
      break;
  }
  id_ = H5I_INVALID_HID;
}

void check(herr_t status, const std::string& what) {
  if (status < 0) throw IoError(with_detail(what));
}

std::string with_detail(const std::string& what) {
  const std::string detail = last_error_detail();
  return detail.empty() ? what : what + ": " + detail;
}

Handle create_file(const std::string& path) {
  silence_hdf5_errors();
  // The 1.10 object formats: object headers, chunk indexes and heaps carry checksums that
  // the library verifies on every read (docs/reliability.md).
  Handle access = checked(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate");
  check(H5Pset_libver_bounds(access.get(), H5F_LIBVER_V110, H5F_LIBVER_V110),
        "H5Pset_libver_bounds");
  errno = 0;
  Handle file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get()));
  if (!file.valid()) {
    const std::string why = errno != 0 ? std::strerror(errno) : last_error_detail();
    throw IoError("cannot create '" + path + "': " + why);
  }
  return file;
}

void close_file(Handle& file, const std::string& path) {
  const hid_t id = file.release();
  if (id < 0) return;
  const std::string why = close_file_id(id);
  if (!why.empty()) throw IoError("cannot write '" + path + "': " + why);
}

Handle open_file_readonly(const std::string& path) {
  silence_hdf5_errors();
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    std::fclose(f);
  } else {
    throw IoError("cannot open '" + path + "': " + std::strerror(errno));
  }
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    throw FormatError("'" + path + "' is not a readable HDF5 file (corrupt or truncated)");
  }
  return checked<FormatError>(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                              "'" + path + "' cannot be opened as HDF5 (corrupt or truncated)");
}

bool exists(hid_t location, const std::string& name) {
  return H5Lexists(location, name.c_str(), H5P_DEFAULT) > 0;
}

Handle create_group(hid_t location, const std::string& name) {
  return checked(H5Gcreate2(location, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                 "cannot create group '" + name + "'");
}

Handle open_group(hid_t location, const std::string& name, const std::string& context) {
  if (!exists(location, name)) throw FormatError(context + ": missing group '" + name + "'");
  return checked<FormatError>(H5Gopen2(location, name.c_str(), H5P_DEFAULT),
                              context + ": cannot open group '" + name + "'");
}

Handle open_dataset(hid_t location, const std::string& name, const std::string& context) {
  if (!exists(location, name)) throw FormatError(context + ": missing dataset '" + name + "'");
  return checked<FormatError>(H5Dopen2(location, name.c_str(), H5P_DEFAULT),
                              context + ": cannot open dataset '" + name + "'");
}

Handle float16_type() {
  Handle type = checked(H5Tcopy(H5T_IEEE_F32LE), "H5Tcopy");
  check(H5Tset_fields(type.get(), 15, 10, 5, 0, 10), "H5Tset_fields(float16)");
  check(H5Tset_size(type.get(), 2), "H5Tset_size(float16)");
  check(H5Tset_ebias(type.get(), 15), "H5Tset_ebias(float16)");
  return type;
}

namespace {

Handle scalar_space() { return checked(H5Screate(H5S_SCALAR), "H5Screate"); }

Handle utf8_string_type() {
  Handle type = checked(H5Tcopy(H5T_C_S1), "H5Tcopy");
  check(H5Tset_size(type.get(), H5T_VARIABLE), "H5Tset_size");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), "H5Tset_cset");
  return type;
}

void write_attr_raw(hid_t obj, const std::string& name, hid_t type, const void* data) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  Handle space = scalar_space();
  Handle attr = checked(H5Acreate2(obj, name.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                        "cannot create attribute '" + name + "'");
  check(H5Awrite(attr.get(), type, data), "cannot write attribute '" + name + "'");
}

Handle open_attr(hid_t obj, const std::string& name, const std::string& context) {
  if (H5Aexists(obj, name.c_str()) <= 0) {
    throw FormatError(context + ": missing attribute '" + name + "'");
  }
  return checked<FormatError>(H5Aopen(obj, name.c_str(), H5P_DEFAULT),
                              context + ": cannot open attribute '" + name + "'");
}

// Copies the strings HDF5 allocated for a variable-length read and frees them (also after a
// read that failed part-way: call `check` after this). Throws FormatError for a string
// longer than kMaxStringBytes.
std::vector<std::string> collect_strings(std::vector<char*>& ptrs, const std::string& what) {
  std::vector<std::string> out;
  out.reserve(ptrs.size());
  bool too_long = false;
  for (char*& p : ptrs) {
    out.emplace_back(p ? std::string(p, strnlen(p, kMaxStringBytes + 1)) : "");
    too_long = too_long || out.back().size() > kMaxStringBytes;
    H5free_memory(p);
    p = nullptr;
  }
  if (too_long) {
    throw FormatError(what + " holds a string longer than " + std::to_string(kMaxStringBytes) +
                      " bytes");
  }
  return out;
}

// Opens an attribute that must hold one value (a scalar or a 1-element array) of class `cls`;
// returns the attribute and its file type. Bounds every later read to one element.
Handle open_single_attr(hid_t obj, const std::string& name, const std::string& context,
                        H5T_class_t cls, const char* kind, Handle& file_type) {
  Handle attr = open_attr(obj, name, context);
  Handle space = checked<FormatError>(H5Aget_space(attr.get()), context + ": H5Aget_space");
  const H5S_class_t shape = H5Sget_simple_extent_type(space.get());
  const hssize_t points = H5Sget_simple_extent_npoints(space.get());
  if (shape == H5S_NULL || shape == H5S_NO_CLASS || points != 1) {
    throw FormatError(context + ": attribute '" + name + "' must hold one value, not " +
                      std::to_string(points < 0 ? 0 : points));
  }
  file_type = checked<FormatError>(H5Aget_type(attr.get()), context + ": H5Aget_type");
  if (H5Tget_class(file_type.get()) != cls) {
    throw FormatError(context + ": attribute '" + name + "' must be " + kind);
  }
  return attr;
}

template <typename T>
void write_numeric_vector(hid_t location, const std::string& name, const std::vector<T>& values,
                          hid_t mem_type, hid_t file_type) {
  const hsize_t n = values.size();
  Handle space = checked(H5Screate_simple(1, &n, nullptr), "H5Screate_simple");
  // Chunked with Fletcher-32 so that a damaged chunk is detected on read; an empty
  // dataset has no data to protect (and HDF5 refuses a chunk larger than a fixed extent).
  Handle create = checked(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate");
  if (n > 0) {
    const hsize_t chunk = std::min<hsize_t>(n, kVectorChunkElements);
    check(H5Pset_chunk(create.get(), 1, &chunk), "H5Pset_chunk");
    check(H5Pset_fletcher32(create.get()), "H5Pset_fletcher32");
  }
  Handle dset = checked(H5Dcreate2(location, name.c_str(), file_type, space.get(), H5P_DEFAULT,
                                   create.get(), H5P_DEFAULT),
                        "cannot create dataset '" + name + "'");
  if (n > 0) {
    check(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
          "cannot write dataset '" + name + "'");
  }
}

}  // namespace

void write_attr(hid_t obj, const std::string& name, const std::string& value) {
  Handle type = utf8_string_type();
  const char* ptr = value.c_str();
  write_attr_raw(obj, name, type.get(), &ptr);
}
void write_attr(hid_t obj, const std::string& name, int64_t value) {
  write_attr_raw(obj, name, H5T_NATIVE_INT64, &value);
}
void write_attr(hid_t obj, const std::string& name, double value) {
  write_attr_raw(obj, name, H5T_NATIVE_DOUBLE, &value);
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

void write_attr(hid_t obj, const std::string& name, const std::vector<std::string>& values) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  std::vector<const char*> ptrs;
  for (const auto& v : values) ptrs.push_back(v.c_str());
  Handle type = utf8_string_type();
  const hsize_t n = values.size();
  Handle space = checked(H5Screate_simple(1, &n, nullptr), "H5Screate_simple");
  Handle attr =
      checked(H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
              "cannot create attribute '" + name + "'");
  check(H5Awrite(attr.get(), type.get(), ptrs.data()), "cannot write attribute '" + name + "'");
}

std::vector<std::string> read_attr_strings(hid_t obj, const std::string& name,
                                           const std::string& context) {
  Handle attr = open_attr(obj, name, context);
  Handle space = checked<FormatError>(H5Aget_space(attr.get()), "H5Aget_space");
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  Handle file_type = checked<FormatError>(H5Aget_type(attr.get()), "H5Aget_type");
  if (n < 0 || H5Tget_class(file_type.get()) != H5T_STRING ||
      H5Tis_variable_str(file_type.get()) <= 0) {
    throw FormatError(context + ": attribute '" + name + "' must be variable-length strings");
  }
  if (n > kMaxAttrStrings) {
    throw FormatError(context + ": attribute '" + name + "' holds " + std::to_string(n) +
                      " strings (at most " + std::to_string(kMaxAttrStrings) + ")");
  }
  Handle type = utf8_string_type();
  std::vector<char*> ptrs(static_cast<size_t>(n), nullptr);
  const herr_t status = H5Aread(attr.get(), type.get(), ptrs.data());
  std::vector<std::string> out = collect_strings(ptrs, context + ": attribute '" + name + "'");
  check(status, context + ": cannot read " + name);
  return out;
}

std::string read_attr_string(hid_t obj, const std::string& name, const std::string& context) {
  Handle file_type;
  Handle attr = open_single_attr(obj, name, context, H5T_STRING, "a string", file_type);
  std::string out;
  if (H5Tis_variable_str(file_type.get()) > 0) {
    Handle type = utf8_string_type();
    std::vector<char*> ptr(1, nullptr);
    const herr_t status = H5Aread(attr.get(), type.get(), ptr.data());
    out = collect_strings(ptr, context + ": attribute '" + name + "'")[0];
    check(status, context + ": cannot read attribute " + name);
  } else {
    // A fixed-size string: read exactly its declared size (bounded), whatever its padding.
    const size_t size = H5Tget_size(file_type.get());
    if (size == 0 || size > kMaxStringBytes) {
      throw FormatError(context + ": attribute '" + name + "' declares a string of " +
                        std::to_string(size) + " bytes (at most " +
                        std::to_string(kMaxStringBytes) + ")");
    }
    std::string raw(size, '\0');
    check(H5Aread(attr.get(), file_type.get(), raw.data()), context + ": cannot read " + name);
    out.assign(raw.c_str(), strnlen(raw.c_str(), size));
  }
  return out;
}

int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& context) {
  Handle file_type;
  Handle attr = open_single_attr(obj, name, context, H5T_INTEGER, "an integer", file_type);
  const size_t size = H5Tget_size(file_type.get());
  if (size == 0 || size > 8) {
    throw FormatError(context + ": attribute '" + name + "' is a " + std::to_string(size * 8) +
                      "-bit integer (at most 64 bits)");
  }
  if (H5Tget_sign(file_type.get()) == H5T_SGN_NONE && size == 8) {
    uint64_t value = 0;
    check(H5Aread(attr.get(), H5T_NATIVE_UINT64, &value), context + ": cannot read " + name);
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw FormatError(context + ": attribute '" + name + "' = " + std::to_string(value) +
                        " is out of range");
    }
    return static_cast<int64_t>(value);
  }
  int64_t value = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), context + ": cannot read " + name);
  return value;
}

int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& context, int64_t min,
                      int64_t max) {
  const int64_t value = read_attr_int(obj, name, context);
  if (value < min || value > max) {
    throw FormatError(context + ": attribute '" + name + "' = " + std::to_string(value) +
                      " is outside [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return value;
}

double read_attr_double(hid_t obj, const std::string& name, const std::string& context) {
  Handle attr = open_attr(obj, name, context);
  Handle file_type = checked<FormatError>(H5Aget_type(attr.get()), "H5Aget_type");
  const H5T_class_t cls = H5Tget_class(file_type.get());
  if (cls == H5T_INTEGER) return static_cast<double>(read_attr_int(obj, name, context));
  Handle checked_type;
  attr = open_single_attr(obj, name, context, H5T_FLOAT, "a number", checked_type);
  const size_t size = H5Tget_size(checked_type.get());
  if (size != 4 && size != 8) {
    throw FormatError(context + ": attribute '" + name + "' is a " + std::to_string(size * 8) +
                      "-bit float (32 or 64 bits)");
  }
  double value = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &value), context + ": cannot read " + name);
  return value;
}

std::vector<hsize_t> dataset_shape(hid_t dataset) {
  Handle space = checked<FormatError>(H5Dget_space(dataset), "H5Dget_space");
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) throw FormatError("cannot read dataset rank");
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return dims;
}

void write_vector(hid_t location, const std::string& name, const std::vector<int32_t>& values) {
  write_numeric_vector(location, name, values, H5T_NATIVE_INT32, H5T_STD_I32LE);
}
void write_vector(hid_t location, const std::string& name, const std::vector<int64_t>& values) {
  write_numeric_vector(location, name, values, H5T_NATIVE_INT64, H5T_STD_I64LE);
}
void write_vector(hid_t location, const std::string& name, const std::vector<float>& values) {
  write_numeric_vector(location, name, values, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE);
}
void write_vector(hid_t location, const std::string& name, const std::vector<double>& values) {
  write_numeric_vector(location, name, values, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE);
}
void write_vector(hid_t location, const std::string& name, const std::vector<std::string>& values) {
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (const auto& s : values) ptrs.push_back(s.c_str());
  Handle type = utf8_string_type();
  const hsize_t n = values.size();
  Handle space = checked(H5Screate_simple(1, &n, nullptr), "H5Screate_simple");
  Handle dset = checked(H5Dcreate2(location, name.c_str(), type.get(), space.get(), H5P_DEFAULT,
                                   H5P_DEFAULT, H5P_DEFAULT),
                        "cannot create dataset '" + name + "'");
  if (n > 0) {
    check(H5Dwrite(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()),
          "cannot write dataset '" + name + "'");
  }
}

void check_storage(hid_t dataset, hsize_t elements, const std::string& context) {
  Handle type = checked<FormatError>(H5Dget_type(dataset), context + ": H5Dget_type");
  Handle create = checked<FormatError>(H5Dget_create_plist(dataset), context + ": plist");
  // A variable-length element is stored as a 16-byte reference to the global heap.
  const hsize_t element_bytes =
      H5Tis_variable_str(type.get()) > 0 ? 16 : static_cast<hsize_t>(H5Tget_size(type.get()));
  if (elements == 0) return;
  if (element_bytes == 0) throw FormatError(context + ": element type of size 0");
  bool deflated = false;
  const int filters = H5Pget_nfilters(create.get());
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0;
    size_t values = 0;
    const H5Z_filter_t id =
        H5Pget_filter2(create.get(), i, &flags, &values, nullptr, 0, nullptr, nullptr);
    if (id == H5Z_FILTER_DEFLATE) {
      deflated = true;
    } else if (id != H5Z_FILTER_SHUFFLE && id != H5Z_FILTER_FLETCHER32) {
      throw FormatError(context + ": uses HDF5 filter " + std::to_string(id) +
                        " (kvsim reads deflate, shuffle and fletcher32)");
    }
  }
  // The layout message's own claim, capped by the file's size (a damaged message may claim
  // more than the file holds).
  hsize_t stored = H5Dget_storage_size(dataset);
  if (const hid_t file = H5Iget_file_id(dataset); file >= 0) {
    hsize_t file_size = 0;
    if (H5Fget_filesize(file, &file_size) >= 0) stored = std::min(stored, file_size);
    H5Fclose(file);
  }
  const long double declared = static_cast<long double>(elements) * element_bytes;
  // Deflate cannot shrink data by more than 1032:1, so a compressed dataset holds at least
  // 1/1032 of its declared bytes; an uncompressed one holds all of them.
  const long double least = deflated ? declared / kMaxDeflateRatio : declared;
  if (static_cast<long double>(stored) < least) {
    throw FormatError(context + ": declares " + std::to_string(elements) + " values (" +
                      std::to_string(static_cast<unsigned long long>(declared)) +
                      " bytes) but the file stores " + std::to_string(stored) +
                      " bytes for it (truncated or corrupt file)");
  }
}

namespace {

// Opens a 1-D dataset; returns it and its length, after checking its size against the limit
// and against the bytes the file holds for it (before anything is allocated).
Handle open_vector(hid_t location, const std::string& name, const std::string& context,
                   hsize_t& length) {
  Handle dset = open_dataset(location, name, context);
  const auto dims = dataset_shape(dset.get());
  if (dims.size() != 1) throw FormatError(context + ": '" + name + "' must be 1-D");
  length = dims[0];
  if (length > kMaxVectorElements) {
    throw FormatError(context + ": '" + name + "' declares " + std::to_string(length) +
                      " values (at most " + std::to_string(kMaxVectorElements) + ")");
  }
  check_storage(dset.get(), length, context + " dataset '" + name + "'");
  return dset;
}

// The class a dataset read as T must have: integers are never read from floats (which
// would truncate them), strings only from strings.
template <typename T>
void check_vector_class(hid_t dataset, const std::string& name, const std::string& context) {
  Handle type = checked<FormatError>(H5Dget_type(dataset), context + ": H5Dget_type");
  const H5T_class_t cls = H5Tget_class(type.get());
  bool ok = false;
  if constexpr (std::is_same_v<T, std::string>) {
    ok = cls == H5T_STRING && H5Tis_variable_str(type.get()) > 0;
  } else if constexpr (std::is_integral_v<T>) {
    ok = cls == H5T_INTEGER;
  } else {
    ok = cls == H5T_FLOAT || cls == H5T_INTEGER;
  }
  if (!ok) {
    const char* want = std::is_same_v<T, std::string> ? "variable-length strings"
                       : std::is_integral_v<T>        ? "integers"
                                                      : "numbers";
    throw FormatError(context + ": '" + name + "' must hold " + want);
  }
}

template <typename T>
hid_t native_type() {
  if constexpr (std::is_same_v<T, int32_t>) return H5T_NATIVE_INT32;
  if constexpr (std::is_same_v<T, int64_t>) return H5T_NATIVE_INT64;
  if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
}

}  // namespace

template <typename T>
std::vector<T> read_vector(hid_t location, const std::string& name, const std::string& context) {
  hsize_t n = 0;
  Handle dset = open_vector(location, name, context, n);
  check_vector_class<T>(dset.get(), name, context);
  if constexpr (std::is_same_v<T, int32_t>) {
    // Read at 64 bits and check the range: HDF5 would clip a wider value silently.
    std::vector<int64_t> wide = read_vector<int64_t>(location, name, context);
    std::vector<int32_t> out(wide.size());
    for (size_t i = 0; i < wide.size(); ++i) {
      if (wide[i] < INT32_MIN || wide[i] > INT32_MAX) {
        throw FormatError(context + ": '" + name + "'[" + std::to_string(i) +
                          "] = " + std::to_string(wide[i]) + " does not fit 32 bits");
      }
      out[i] = static_cast<int32_t>(wide[i]);
    }
    return out;
  } else if constexpr (std::is_same_v<T, std::string>) {
    Handle type = utf8_string_type();
    std::vector<char*> ptrs(n, nullptr);
    const bool ok =
        n == 0 || H5Dread(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) >= 0;
    std::vector<std::string> out = collect_strings(ptrs, context + ": '" + name + "'");
    if (!ok) throw FormatError(with_detail(context + ": cannot read strings '" + name + "'"));
    return out;
  } else {
    std::vector<T> out(n);
    if (n > 0 &&
        H5Dread(dset.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) {
      throw FormatError(
          with_detail(context + ": cannot read '" + name + "' (truncated or corrupt file)"));
    }
    return out;
  }
}
template std::vector<int32_t> read_vector(hid_t, const std::string&, const std::string&);
template std::vector<int64_t> read_vector(hid_t, const std::string&, const std::string&);
template std::vector<float> read_vector(hid_t, const std::string&, const std::string&);
template std::vector<double> read_vector(hid_t, const std::string&, const std::string&);
template std::vector<std::string> read_vector(hid_t, const std::string&, const std::string&);

}  // namespace kvsim::h5
