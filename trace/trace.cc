#include "trace/trace.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <sstream>

#include "sim/base/atomic_write.h"
#include "sim/base/errors.h"
#include "sim/base/fp16.h"

namespace kvsim {

std::string sequence_group_name(int index) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%06d", index);
  return buf;
}

namespace {

constexpr const char* kDtypeAttr = "dtype";

// The first value of x[0..n) that is non-finite or above `bound` in magnitude; n if none. One
// vectorised pass tests the whole buffer (a NaN fails `<=`); the index is looked for only on
// failure.
size_t first_bad_value(const float* x, size_t n, double bound) {
  // The largest float <= bound: for a float v, |v| <= bound iff |v| <= bound_f.
  float bound_f = static_cast<float>(bound);
  if (static_cast<double>(bound_f) > bound) bound_f = std::nextafter(bound_f, 0.f);
  unsigned bad = 0;  // an OR over the buffer: vectorised by -O3
  for (size_t i = 0; i < n; ++i) bad |= !(std::fabs(x[i]) <= bound_f);
  if (bad == 0) return n;
  size_t i = 0;
  while (i < n && std::fabs(x[i]) <= bound_f) ++i;
  return i;
}

// Reads a dataset slab [slot, :, :, :] into float32, converting the stored type and checking
// the values. One head (one chunk of the trace layout) at a time: a 4-D memory space of the
// selection's shape, so that HDF5 copies the chunk whole (a 1-D memory space sends it down an
// element-by-element path), then conversion and check of that head while it is in cache.
std::vector<float> read_slab(hid_t dataset, int slot, hsize_t heads, hsize_t tokens, hsize_t dim,
                             StoredDType dtype, double bound, const std::string& context) {
  const size_t per_head = tokens * dim;
  std::vector<float> out(heads * per_head);
  h5::Handle file_space = h5::checked<FormatError>(H5Dget_space(dataset), "H5Dget_space");
  const hsize_t extent[4] = {1, 1, tokens, dim};
  h5::Handle mem_space = h5::checked(H5Screate_simple(4, extent, nullptr), "H5Screate_simple");
  h5::Handle half;
  if (dtype == StoredDType::kFloat16) half = h5::float16_type();
  std::vector<uint16_t> raw(dtype == StoredDType::kFloat32 ? 0 : per_head);
  for (hsize_t h = 0; h < heads; ++h) {
    const hsize_t start[4] = {static_cast<hsize_t>(slot), h, 0, 0};
    h5::check(
        H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, extent, nullptr),
        "H5Sselect_hyperslab");
    float* head_out = out.data() + h * per_head;
    const hid_t mem_type = dtype == StoredDType::kFloat32   ? H5T_NATIVE_FLOAT
                           : dtype == StoredDType::kFloat16 ? half.get()
                                                            : H5T_NATIVE_UINT16;
    void* buffer = dtype == StoredDType::kFloat32 ? static_cast<void*>(head_out) : raw.data();
    if (H5Dread(dataset, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, buffer) < 0) {
      throw FormatError(
          h5::with_detail(context + ": cannot read data (truncated or corrupt file)"));
    }
    if (dtype == StoredDType::kFloat16) half_bits_to_float_array(raw.data(), head_out, per_head);
    if (dtype == StoredDType::kBFloat16) bf16_bits_to_float_array(raw.data(), head_out, per_head);
    const size_t bad = first_bad_value(head_out, per_head, bound);
    if (bad == per_head) continue;
    const float value = head_out[bad];
    std::ostringstream os;
    os << context << ": " << (std::isfinite(value) ? "too large" : "non-finite") << " value ("
       << value << ") at head " << h << ", token " << bad / dim << ", channel " << bad % dim;
    if (std::isfinite(value)) {
      os << "; |values| must be at most " << bound
         << " = min(65504 / max(2, sqrt(head_dim)), sqrt(FLT_MAX / (4 head_dim max(1, "
            "attn_scale)))): the fp16 cache (its scales and norms) and float attention "
            "cannot hold more";
    }
    throw FormatError(os.str());
  }
  return out;
}

void check_dataset_type(hid_t dataset, StoredDType dtype, const std::string& context) {
  h5::Handle type = h5::checked<FormatError>(H5Dget_type(dataset), "H5Dget_type");
  const H5T_class_t cls = H5Tget_class(type.get());
  const size_t size = H5Tget_size(type.get());
  bool ok = false;
  switch (dtype) {
    case StoredDType::kFloat16:
      ok = cls == H5T_FLOAT && size == 2;
      break;
    case StoredDType::kFloat32:
      ok = cls == H5T_FLOAT && size == 4;
      break;
    case StoredDType::kBFloat16:
      ok = cls == H5T_INTEGER && size == 2;
      break;
  }
  if (!ok) {
    throw FormatError(context + ": stored type does not match the file's dtype '" +
                      dtype_name(dtype) + "'");
  }
}

std::string make_trace_id(const TraceMeta& meta) {
  std::random_device rd;
  const auto now = std::chrono::system_clock::now().time_since_epoch().count();
  uint64_t h = 1469598103934665603ull ^ static_cast<uint64_t>(now) ^ (uint64_t{rd()} << 32);
  for (char c : meta.model_name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

TraceReader::TraceReader(const std::string& path) : path_(path) {
  const std::string ctx = "trace '" + path + "'";
  file_ = h5::open_file_readonly(path);
  const hid_t root = file_.get();
  const std::string format = h5::read_attr_string(root, "format", ctx);
  if (format != kTraceFormatName) {
    throw FormatError(ctx + ": format is '" + format + "', expected '" + kTraceFormatName + "'");
  }
  const int64_t version = h5::read_attr_int(root, "version", ctx);
  if (version != 1 && version != kTraceFormatVersion) {
    throw FormatError(ctx + ": unsupported trace format version " + std::to_string(version) +
                      " (this kvsim reads versions 1 and " + std::to_string(kTraceFormatVersion) +
                      ")");
  }
  version_ = static_cast<int>(version);
  meta_.model_name = h5::read_attr_string(root, "model_name", ctx);
  meta_.model_source = h5::read_attr_string(root, "model_source", ctx);
  meta_.trace_id = h5::read_attr_string(root, "trace_id", ctx);
  auto read_count = [&](const char* name, int64_t max) {
    return static_cast<int>(h5::read_attr_int(root, name, ctx, 1, max));
  };
  meta_.num_model_layers = read_count("num_model_layers", kMaxTraceLayers);
  meta_.num_q_heads = read_count("num_q_heads", kMaxTraceHeads);
  meta_.num_kv_heads = read_count("num_kv_heads", kMaxTraceHeads);
  meta_.head_dim = read_count("head_dim", kMaxTraceHeadDim);
  meta_.attn_scale = h5::read_attr_double(root, "attn_scale", ctx);
  meta_.rope_theta = h5::read_attr_double(root, "rope_theta", ctx);
  try {
    meta_.dtype = parse_dtype(h5::read_attr_string(root, kDtypeAttr, ctx));
  } catch (const ConfigError& e) {
    throw FormatError(ctx + ": " + e.what());
  }
  const auto layer_ids = h5::read_int32_vector(root, "layer_ids", ctx);
  const auto windows = h5::read_int32_vector(root, "sliding_window", ctx);
  meta_.layer_ids.assign(layer_ids.begin(), layer_ids.end());
  meta_.sliding_window.assign(windows.begin(), windows.end());
  if (version_ >= 2) {
    read_rope_v2(root, ctx);
  } else {
    rope_theta_by_layer_type_v1(root, ctx);
  }
  meta_.validate(ctx);

  const int64_t num_sequences =
      h5::read_attr_int(root, "num_sequences", ctx, 1, kMaxTraceSequences);
  h5::Handle seqs = h5::open_group(root, "sequences", ctx);
  H5G_info_t seqs_info{};
  h5::check(H5Gget_info(seqs.get(), &seqs_info), ctx + ": cannot read group 'sequences'");
  if (seqs_info.nlinks != static_cast<hsize_t>(num_sequences)) {
    throw FormatError(ctx + ": num_sequences is " + std::to_string(num_sequences) +
                      " but group 'sequences' holds " + std::to_string(seqs_info.nlinks) +
                      " entries");
  }
  const hsize_t L = meta_.num_layers();
  for (int64_t s = 0; s < num_sequences; ++s) {
    const std::string name = sequence_group_name(static_cast<int>(s));
    const std::string sctx = ctx + " sequence " + name;
    h5::Handle group = h5::open_group(seqs.get(), name, ctx);
    SequenceInfo info;
    info.prompt_len = h5::read_attr_int(group.get(), "prompt_len", sctx);
    {  // the length only: token_ids are read when asked for
      h5::Handle token_ids = h5::open_dataset(group.get(), "token_ids", sctx);
      const auto dims = h5::dataset_shape(token_ids.get());
      if (dims.size() != 1) throw FormatError(sctx + ": 'token_ids' must be 1-D");
      if (dims[0] > static_cast<hsize_t>(kMaxTraceTokens)) {
        throw FormatError(sctx + ": " + std::to_string(dims[0]) + " tokens (at most " +
                          std::to_string(kMaxTraceTokens) + ")");
      }
      h5::check_storage(token_ids.get(), dims[0], sctx + " dataset 'token_ids'");
      info.num_tokens = static_cast<int64_t>(dims[0]);
    }
    if (info.num_tokens == 0) throw FormatError(sctx + ": no tokens");
    if (info.prompt_len < 1 || info.prompt_len > info.num_tokens) {
      throw FormatError(sctx + ": prompt_len " + std::to_string(info.prompt_len) +
                        " outside [1, num_tokens=" + std::to_string(info.num_tokens) + "]");
    }
    const hsize_t T = info.num_tokens, D = meta_.head_dim;
    const std::pair<const char*, hsize_t> expected[] = {
        {"q", static_cast<hsize_t>(meta_.num_q_heads)},
        {"k", static_cast<hsize_t>(meta_.num_kv_heads)},
        {"v", static_cast<hsize_t>(meta_.num_kv_heads)}};
    for (const auto& [dname, heads] : expected) {
      h5::Handle dset = h5::open_dataset(group.get(), dname, sctx);
      const auto dims = h5::dataset_shape(dset.get());
      const std::vector<hsize_t> want = {L, heads, T, D};
      if (dims != want) {
        std::ostringstream os;
        os << sctx << ": dataset '" << dname << "' has shape [";
        for (size_t i = 0; i < dims.size(); ++i) os << (i ? ", " : "") << dims[i];
        os << "], expected [" << L << ", " << heads << ", " << T << ", " << D
           << "] = [layers, heads, tokens, head_dim]";
        throw FormatError(os.str());
      }
      check_dataset_type(dset.get(), meta_.dtype, sctx + " dataset '" + dname + "'");
      {
        h5::Handle create =
            h5::checked<FormatError>(H5Dget_create_plist(dset.get()), "H5Dget_create_plist");
        const int filters = H5Pget_nfilters(create.get());
        for (int f = 0; f < filters; ++f) {
          unsigned flags = 0;
          size_t values = 0;
          if (H5Pget_filter2(create.get(), static_cast<unsigned>(f), &flags, &values, nullptr, 0,
                             nullptr, nullptr) == H5Z_FILTER_DEFLATE) {
            deflated_ = true;
          }
        }
      }
      if (heads * T * D > kMaxLayerElements) {
        throw FormatError(sctx + ": dataset '" + dname + "' has " + std::to_string(heads * T * D) +
                          " values per layer (at most " + std::to_string(kMaxLayerElements) + ")");
      }
      h5::check_storage(dset.get(), L * heads * T * D, sctx + " dataset '" + dname + "'");
    }
    if (version_ >= 2) check_positions(group.get(), info.num_tokens, sctx);
    sequences_.push_back(info);
  }
  if (sequences_.empty()) throw FormatError(ctx + ": holds no sequences");
}

// v2: the RoPE the model applied (docs/trace-format.md).
void TraceReader::read_rope_v2(hid_t root, const std::string& ctx) {
  meta_.rope_type = h5::read_attr_string(root, "rope_type", ctx);
  meta_.rope_layout = h5::read_attr_string(root, "rope_layout", ctx);
  meta_.rotary_dim =
      static_cast<int>(h5::read_attr_int(root, "rotary_dim", ctx, 0, kMaxTraceHeadDim));
  meta_.rope_theta_by_slot = h5::read_vector<double>(root, "rope_theta_by_layer", ctx);
  meta_.rope_factor_by_slot = h5::read_vector<double>(root, "rope_factor_by_layer", ctx);
}

// v1: only Gemma 3's captures name a second base, as the string attribute
// `rope_theta_by_layer_type` ("sliding_attention=10000, full_attention=1e+06"); a layer with a
// sliding window takes the sliding base.
void TraceReader::rope_theta_by_layer_type_v1(hid_t root, const std::string& ctx) {
  // Models known to scale RoPE: a v1 trace cannot say how, so the pre-RoPE mode refuses them.
  std::string model = meta_.model_name;
  std::transform(model.begin(), model.end(), model.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* scaled :
       {"llama-3.1", "llama-3.2", "llama-3.3", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b"}) {
    if (model.find(scaled) != std::string::npos) {
      meta_.rope_type = "unrecorded (a v1 trace of a model that scales RoPE: capture it again)";
    }
  }
  if (!h5::has_attr(root, "rope_theta_by_layer_type")) return;
  const std::string text = h5::read_attr_string(root, "rope_theta_by_layer_type", ctx);
  std::map<std::string, double> per_type;
  std::istringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    const auto eq = item.find('=');
    if (eq == std::string::npos) continue;
    std::string key = item.substr(0, eq);
    key.erase(0, key.find_first_not_of(' '));
    try {
      per_type[key] = std::stod(item.substr(eq + 1));
    } catch (const std::exception&) {
      throw FormatError(ctx + ": cannot read rope_theta_by_layer_type '" + text + "'");
    }
  }
  const auto sliding = per_type.find("sliding_attention");
  if (sliding == per_type.end()) return;
  for (int window : meta_.sliding_window) {
    meta_.rope_theta_by_slot.push_back(window > 0 ? sliding->second : meta_.rope_theta);
  }
}

// v2 records each sequence's positions; kvsim replays one unpadded sequence, so they must be
// 0..T-1 (the position of trace index t is t, which the pre-RoPE mode relies on).
void TraceReader::check_positions(hid_t group, int64_t num_tokens, const std::string& sctx) {
  const auto positions = h5::read_int32_vector(group, "position_ids", sctx);
  if (static_cast<int64_t>(positions.size()) != num_tokens) {
    throw FormatError(sctx + ": 'position_ids' has " + std::to_string(positions.size()) +
                      " entries for " + std::to_string(num_tokens) + " tokens");
  }
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (positions[t] != t) {
      throw FormatError(sctx + ": position_ids[" + std::to_string(t) + "] is " +
                        std::to_string(positions[t]) +
                        " (kvsim replays unpadded sequences whose positions are 0..T-1)");
    }
  }
}

LayerData TraceReader::read_layer(int sequence, int slot) const {
  KVSIM_CHECK(sequence >= 0 && sequence < num_sequences());
  KVSIM_CHECK(slot >= 0 && slot < meta_.num_layers());
  const std::string name = sequence_group_name(sequence);
  const std::string ctx =
      "trace '" + path_ + "' sequence " + name + " layer " + std::to_string(meta_.layer_ids[slot]);
  h5::Handle group = h5::open_group(file_.get(), "sequences/" + name, ctx);
  LayerData out;
  out.slot = slot;
  out.num_tokens = static_cast<int>(sequences_[sequence].num_tokens);
  out.head_dim = meta_.head_dim;
  const hsize_t T = out.num_tokens, D = meta_.head_dim;
  auto read = [&](const char* dname, int heads) {
    h5::Handle dset = h5::open_dataset(group.get(), dname, ctx);
    return read_slab(dset.get(), slot, heads, T, D, meta_.dtype, meta_.value_bound(),
                     ctx + " dataset '" + std::string(dname) + "'");
  };
  out.q = read("q", meta_.num_q_heads);
  out.k = read("k", meta_.num_kv_heads);
  out.v = read("v", meta_.num_kv_heads);
  return out;
}

std::vector<int32_t> TraceReader::read_token_ids(int sequence) const {
  KVSIM_CHECK(sequence >= 0 && sequence < num_sequences());
  const std::string name = sequence_group_name(sequence);
  h5::Handle group = h5::open_group(file_.get(), "sequences/" + name, "trace '" + path_ + "'");
  return h5::read_int32_vector(group.get(), "token_ids", "trace '" + path_ + "' sequence " + name);
}

void TraceReader::validate_all_values() const {
  for (int s = 0; s < num_sequences(); ++s) {
    (void)read_token_ids(s);
    for (int l = 0; l < meta_.num_layers(); ++l) (void)read_layer(s, l);
  }
}

// ----------------------------------------------------------------------------

TraceWriter::TraceWriter(const std::string& path, TraceMeta meta, TraceWriteOptions options)
    : path_(path), meta_(std::move(meta)), options_(options) {
  meta_.dtype = options_.dtype;
  if (meta_.trace_id.empty()) meta_.trace_id = make_trace_id(meta_);
  meta_.validate("trace metadata for '" + path + "'");
  if (options_.gzip_level < 0 || options_.gzip_level > 9) {
    throw ConfigError("gzip level must be in 0..9, got " + std::to_string(options_.gzip_level));
  }
  tmp_path_ = atomic_temp_path(path);
  file_ = h5::create_file(tmp_path_);
  const hid_t root = file_.get();
  h5::write_attr(root, "format", std::string(kTraceFormatName));
  h5::write_attr(root, "version", kTraceFormatVersion);
  h5::write_attr(root, "model_name", meta_.model_name);
  h5::write_attr(root, "model_source", meta_.model_source);
  h5::write_attr(root, "trace_id", meta_.trace_id);
  h5::write_attr(root, "num_model_layers", int64_t{meta_.num_model_layers});
  h5::write_attr(root, "num_q_heads", int64_t{meta_.num_q_heads});
  h5::write_attr(root, "num_kv_heads", int64_t{meta_.num_kv_heads});
  h5::write_attr(root, "head_dim", int64_t{meta_.head_dim});
  h5::write_attr(root, "attn_scale", meta_.attn_scale);
  h5::write_attr(root, "rope_theta", meta_.rope_theta);
  h5::write_attr(root, kDtypeAttr, dtype_name(meta_.dtype));
  h5::write_vector(root, "layer_ids",
                   std::vector<int32_t>(meta_.layer_ids.begin(), meta_.layer_ids.end()));
  h5::write_vector(root, "sliding_window",
                   std::vector<int32_t>(meta_.sliding_window.begin(), meta_.sliding_window.end()));
  h5::write_attr(root, "rope_type", meta_.rope_type);
  h5::write_attr(root, "rope_layout", meta_.rope_layout);
  h5::write_attr(root, "rotary_dim", int64_t{meta_.rotary_dim});
  const auto per_slot = [&](const std::vector<double>& values, double fallback) {
    return values.empty() ? std::vector<double>(meta_.layer_ids.size(), fallback) : values;
  };
  h5::write_vector(root, "rope_theta_by_layer",
                   per_slot(meta_.rope_theta_by_slot, meta_.rope_theta));
  h5::write_vector(root, "rope_factor_by_layer", per_slot(meta_.rope_factor_by_slot, 1.0));
  h5::create_group(root, "sequences");
}

TraceWriter::~TraceWriter() {
  if (!finished_) {
    file_.reset();
    atomic_discard(tmp_path_);
  }
}

void TraceWriter::add_sequence(const std::vector<int32_t>& token_ids, int64_t prompt_len,
                               const std::vector<float>& q, const std::vector<float>& k,
                               const std::vector<float>& v) {
  KVSIM_CHECK(!finished_);
  const hsize_t L = meta_.num_layers(), T = token_ids.size(), D = meta_.head_dim;
  const hsize_t Hq = meta_.num_q_heads, Hkv = meta_.num_kv_heads;
  if (T == 0) throw ConfigError("a sequence needs at least one token");
  if (prompt_len < 1 || prompt_len > static_cast<int64_t>(T)) {
    throw ConfigError("prompt_len must be in [1, num_tokens]");
  }
  if (q.size() != L * Hq * T * D || k.size() != L * Hkv * T * D || v.size() != L * Hkv * T * D) {
    throw ConfigError("q/k/v sizes do not match [layers, heads, tokens, head_dim]");
  }
  const std::string name = sequence_group_name(num_sequences_);
  h5::Handle group = h5::create_group(file_.get(), "sequences/" + name);
  h5::write_attr(group.get(), "prompt_len", prompt_len);
  h5::write_attr(group.get(), "num_tokens", static_cast<int64_t>(T));
  h5::write_vector(group.get(), "token_ids", token_ids);
  std::vector<int32_t> positions(T);
  for (hsize_t t = 0; t < T; ++t) positions[t] = static_cast<int32_t>(t);
  h5::write_vector(group.get(), "position_ids", positions);

  auto write = [&](const char* dname, const std::vector<float>& data, hsize_t heads) {
    const hsize_t dims[4] = {L, heads, T, D};
    // One chunk per (layer, head): a layer x head is one contiguous read.
    const hsize_t chunk[4] = {1, 1, T, D};
    h5::Handle space = h5::checked(H5Screate_simple(4, dims, nullptr), "H5Screate_simple");
    h5::Handle plist = h5::checked(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate");
    h5::check(H5Pset_chunk(plist.get(), 4, chunk), "H5Pset_chunk");
    if (options_.gzip_level > 0) {
      h5::check(H5Pset_shuffle(plist.get()), "H5Pset_shuffle");
      h5::check(H5Pset_deflate(plist.get(), options_.gzip_level), "H5Pset_deflate");
    }
    // Last in the pipeline: the checksum covers the bytes as stored.
    h5::check(H5Pset_fletcher32(plist.get()), "H5Pset_fletcher32");
    for (float x : data) {
      if (!std::isfinite(x)) throw ConfigError(std::string("non-finite value in ") + dname);
    }
    h5::Handle file_type;
    hid_t mem_type = H5T_NATIVE_FLOAT;
    std::vector<uint16_t> packed;
    const void* buffer = data.data();
    switch (options_.dtype) {
      case StoredDType::kFloat32:
        file_type = h5::checked(H5Tcopy(H5T_IEEE_F32LE), "H5Tcopy");
        mem_type = H5T_NATIVE_FLOAT;
        break;
      case StoredDType::kFloat16:
        file_type = h5::float16_type();
        mem_type = file_type.get();
        packed.resize(data.size());
        for (size_t i = 0; i < data.size(); ++i) packed[i] = float_to_half_bits(data[i]);
        buffer = packed.data();
        break;
      case StoredDType::kBFloat16:
        file_type = h5::checked(H5Tcopy(H5T_STD_U16LE), "H5Tcopy");
        mem_type = H5T_NATIVE_UINT16;
        packed.resize(data.size());
        for (size_t i = 0; i < data.size(); ++i) packed[i] = float_to_bf16_bits(data[i]);
        buffer = packed.data();
        break;
    }
    h5::Handle dset = h5::checked(H5Dcreate2(group.get(), dname, file_type.get(), space.get(),
                                             H5P_DEFAULT, plist.get(), H5P_DEFAULT),
                                  std::string("cannot create dataset ") + dname);
    h5::write_attr(dset.get(), "dtype", dtype_name(options_.dtype));
    h5::check(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer),
              std::string("cannot write dataset ") + dname);
  };
  write("q", q, Hq);
  write("k", k, Hkv);
  write("v", v, Hkv);
  ++num_sequences_;
}

void TraceWriter::finish() {
  KVSIM_CHECK(!finished_);
  if (num_sequences_ == 0) throw ConfigError("a trace needs at least one sequence");
  h5::write_attr(file_.get(), "num_sequences", int64_t{num_sequences_});
  h5::close_file(file_, tmp_path_);
  atomic_commit(tmp_path_, path_);
  finished_ = true;
}

}  // namespace kvsim
