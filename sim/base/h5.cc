#include "sim/base/h5.h"

#include <cstring>
#include <type_traits>

namespace kvsim::h5 {

void silence_hdf5_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

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
      H5Fclose(id_);
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
  if (status < 0) throw IoError(what);
}

Handle create_file(const std::string& path) {
  silence_hdf5_errors();
  return checked(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                 "cannot create HDF5 file '" + path + "'");
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

template <typename T>
void write_numeric_vector(hid_t location, const std::string& name, const std::vector<T>& values,
                          hid_t mem_type, hid_t file_type) {
  const hsize_t n = values.size();
  Handle space = checked(H5Screate_simple(1, &n, nullptr), "H5Screate_simple");
  Handle dset = checked(H5Dcreate2(location, name.c_str(), file_type, space.get(), H5P_DEFAULT,
                                   H5P_DEFAULT, H5P_DEFAULT),
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
  Handle type = utf8_string_type();
  std::vector<char*> ptrs(static_cast<size_t>(n), nullptr);
  check(H5Aread(attr.get(), type.get(), ptrs.data()), context + ": cannot read " + name);
  std::vector<std::string> out;
  for (char* p : ptrs) {
    out.emplace_back(p ? p : "");
    H5free_memory(p);
  }
  return out;
}

std::string read_attr_string(hid_t obj, const std::string& name, const std::string& context) {
  Handle attr = open_attr(obj, name, context);
  Handle file_type = checked<FormatError>(H5Aget_type(attr.get()), "H5Aget_type");
  if (H5Tget_class(file_type.get()) != H5T_STRING) {
    throw FormatError(context + ": attribute '" + name + "' must be a string");
  }
  if (H5Tis_variable_str(file_type.get()) > 0) {
    Handle type = utf8_string_type();
    char* ptr = nullptr;
    check(H5Aread(attr.get(), type.get(), &ptr), context + ": cannot read attribute " + name);
    std::string out = ptr ? ptr : "";
    H5free_memory(ptr);
    return out;
  }
  const size_t size = H5Tget_size(file_type.get());
  std::string out(size, '\0');
  check(H5Aread(attr.get(), file_type.get(), out.data()), context + ": cannot read " + name);
  out.resize(std::strlen(out.c_str()));
  return out;
}

int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& context) {
  Handle attr = open_attr(obj, name, context);
  Handle file_type = checked<FormatError>(H5Aget_type(attr.get()), "H5Aget_type");
  if (H5Tget_class(file_type.get()) != H5T_INTEGER) {
    throw FormatError(context + ": attribute '" + name + "' must be an integer");
  }
  int64_t value = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), context + ": cannot read " + name);
  return value;
}

double read_attr_double(hid_t obj, const std::string& name, const std::string& context) {
  Handle attr = open_attr(obj, name, context);
  Handle file_type = checked<FormatError>(H5Aget_type(attr.get()), "H5Aget_type");
  const H5T_class_t cls = H5Tget_class(file_type.get());
  if (cls != H5T_FLOAT && cls != H5T_INTEGER) {
    throw FormatError(context + ": attribute '" + name + "' must be numeric");
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

namespace {

// Opens a 1-D dataset; returns it and its length.
Handle open_vector(hid_t location, const std::string& name, const std::string& context,
                   hsize_t& length) {
  Handle dset = open_dataset(location, name, context);
  const auto dims = dataset_shape(dset.get());
  if (dims.size() != 1) throw FormatError(context + ": '" + name + "' must be 1-D");
  length = dims[0];
  return dset;
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
  if constexpr (std::is_same_v<T, std::string>) {
    Handle type = utf8_string_type();
    std::vector<char*> ptrs(n, nullptr);
    if (n > 0 && H5Dread(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0) {
      throw FormatError(context + ": cannot read strings '" + name + "'");
    }
    std::vector<std::string> out;
    for (char* p : ptrs) {
      out.emplace_back(p ? p : "");
      H5free_memory(p);
    }
    return out;
  } else {
    std::vector<T> out(n);
    if (n > 0 &&
        H5Dread(dset.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) {
      throw FormatError(context + ": cannot read '" + name + "' (truncated or corrupt file)");
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
