#include "sim/skvq_calibration_io.h"

#include <cstdio>
#include <vector>

#include "sim/base/atomic_write.h"
#include "sim/base/errors.h"
#include "sim/base/h5.h"

namespace kvsim {

namespace {

constexpr const char* kCalibFormat = "kvsim-skvq-calibration";
constexpr int64_t kCalibVersion = 1;

template <typename T>
std::vector<T> read_vector(hid_t location, const std::string& name, hid_t mem_type,
                           const std::string& context) {
  h5::Handle dset = h5::open_dataset(location, name, context);
  const auto dims = h5::dataset_shape(dset.get());
  if (dims.size() != 1) throw FormatError(context + ": '" + name + "' must be 1-D");
  std::vector<T> out(dims[0]);
  if (!out.empty() &&
      H5Dread(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) {
    throw FormatError(context + ": cannot read '" + name + "' (truncated or corrupt file)");
  }
  return out;
}

void expect_size(size_t got, size_t want, const std::string& name, const std::string& context) {
  if (got != want) {
    throw FormatError(context + ": '" + name + "' holds " + std::to_string(got) +
                      " values, expected " + std::to_string(want));
  }
}

}  // namespace

void save_skvq_calibration(const std::string& path, const SkvqCalibration& calib) {
  atomic_write(path, [&](const std::string& tmp) {
    h5::Handle file = h5::create_file(tmp);
    const hid_t root = file.get();
    const SkvqOptions& o = calib.options;
    h5::write_attr(root, "format", std::string(kCalibFormat));
    h5::write_attr(root, "version", kCalibVersion);
    h5::write_attr(root, "trace_id", calib.trace_id);
    h5::write_attr(root, "model_name", calib.model_name);
    h5::write_attr(root, "num_kv_heads", int64_t{calib.num_kv_heads});
    h5::write_attr(root, "head_dim", int64_t{calib.head_dim});
    h5::write_attr(root, "scope", skvq_scope_name(o.scope));
    h5::write_attr(root, "group", int64_t{o.group});
    h5::write_attr(root, "reorder", int64_t{o.reorder});
    h5::write_attr(root, "clip_search", int64_t{o.clip_search});
    h5::write_attr(root, "clip", o.clip);
    h5::write_attr(root, "k_bits", o.k_bits.bits);
    h5::write_attr(root, "v_bits", o.v_bits.bits);
    h5::write_attr(root, "meta", skvq_meta_name(o.meta));
    h5::write_attr(root, "sinks", int64_t{o.sinks});
    h5::write_attr(root, "calib_tokens", int64_t{o.calib_tokens});
    h5::write_attr(root, "prerope", int64_t{o.prerope});
    h5::write_vector(root, "layer_ids",
                     std::vector<int32_t>(calib.layer_ids.begin(), calib.layer_ids.end()));
    h5::write_vector(root, "sequences",
                     std::vector<int32_t>(calib.sequences.begin(), calib.sequences.end()));
    std::vector<int64_t> tokens;
    std::vector<float> mins[2], maxs[2], clips[2];
    std::vector<int32_t> perms[2], groups[2], starts[2];
    for (size_t l = 0; l < calib.layers.size(); ++l) {
      const SkvqLayerStats& s = calib.stats[l];
      tokens.push_back(s.tokens);
      mins[0].insert(mins[0].end(), s.k_min.begin(), s.k_min.end());
      maxs[0].insert(maxs[0].end(), s.k_max.begin(), s.k_max.end());
      mins[1].insert(mins[1].end(), s.v_min.begin(), s.v_min.end());
      maxs[1].insert(maxs[1].end(), s.v_max.begin(), s.v_max.end());
      for (int side = 0; side < 2; ++side) {
        for (const SkvqGrouping& g : side == 0 ? calib.layers[l].k : calib.layers[l].v) {
          perms[side].insert(perms[side].end(), g.perm.begin(), g.perm.end());
          groups[side].push_back(g.groups());
          starts[side].insert(starts[side].end(), g.starts.begin(), g.starts.end());
          clips[side].insert(clips[side].end(), g.clip.begin(), g.clip.end());
        }
      }
    }
    h5::write_vector(root, "tokens", tokens);
    for (int side = 0; side < 2; ++side) {
      const std::string p = side == 0 ? "k_" : "v_";
      h5::write_vector(root, p + "min", mins[side]);
      h5::write_vector(root, p + "max", maxs[side]);
      h5::write_vector(root, p + "perm", perms[side]);
      h5::write_vector(root, p + "groups", groups[side]);
      h5::write_vector(root, p + "starts", starts[side]);
      h5::write_vector(root, p + "clip", clips[side]);
    }
    h5::close_file(file, tmp);
  });
}

SkvqCalibration load_skvq_calibration(const std::string& path, const TraceMeta& meta) {
  const std::string ctx = "skvq calibration '" + path + "'";
  h5::Handle file = h5::open_file_readonly(path);
  const hid_t root = file.get();
  if (h5::read_attr_string(root, "format", ctx) != kCalibFormat) {
    throw FormatError(ctx + ": not a kvsim SKVQ calibration file (format attribute)");
  }
  const int64_t version = h5::read_attr_int(root, "version", ctx);
  if (version != kCalibVersion) {
    throw FormatError(ctx + ": version " + std::to_string(version) +
                      " is not supported (expected " + std::to_string(kCalibVersion) + ")");
  }
  SkvqCalibration c;
  c.trace_id = h5::read_attr_string(root, "trace_id", ctx);
  c.model_name = h5::read_attr_string(root, "model_name", ctx);
  c.num_kv_heads = static_cast<int>(h5::read_attr_int(root, "num_kv_heads", ctx));
  c.head_dim = static_cast<int>(h5::read_attr_int(root, "head_dim", ctx));
  SkvqOptions& o = c.options;
  const std::string scope = h5::read_attr_string(root, "scope", ctx);
  if (scope != "head" && scope != "layer") throw FormatError(ctx + ": bad scope '" + scope + "'");
  o.scope = scope == "head" ? SkvqScope::kHead : SkvqScope::kLayer;
  o.group = static_cast<int>(h5::read_attr_int(root, "group", ctx));
  o.reorder = h5::read_attr_int(root, "reorder", ctx) != 0;
  o.clip_search = h5::read_attr_int(root, "clip_search", ctx) != 0;
  o.clip = h5::read_attr_double(root, "clip", ctx);
  o.sinks = static_cast<int>(h5::read_attr_int(root, "sinks", ctx));
  o.calib_tokens = static_cast<int>(h5::read_attr_int(root, "calib_tokens", ctx));
  // Files written before the pre-RoPE option hold post-RoPE statistics.
  o.prerope = h5::has_attr(root, "prerope") && h5::read_attr_int(root, "prerope", ctx) != 0;
  try {
    o.k_bits = BitWidth::parse(h5::read_attr_double(root, "k_bits", ctx), "k_bits");
    o.v_bits = BitWidth::parse(h5::read_attr_double(root, "v_bits", ctx), "v_bits");
    o.meta = parse_meta_format(h5::read_attr_string(root, "meta", ctx));
  } catch (const ConfigError& e) {
    throw FormatError(ctx + ": " + e.what());
  }
  const std::vector<int32_t> layer_ids = h5::read_int32_vector(root, "layer_ids", ctx);
  c.layer_ids.assign(layer_ids.begin(), layer_ids.end());
  const std::vector<int32_t> sequences = h5::read_int32_vector(root, "sequences", ctx);
  c.sequences.assign(sequences.begin(), sequences.end());

  // The trace it will be used on must have the same layers and head shapes.
  auto list = [](const std::vector<int>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) s += ',';
      s += std::to_string(v[i]);
    }
    return s + "]";
  };
  if (c.layer_ids != meta.layer_ids) {
    throw FormatError(ctx + ": calibrated layers " + list(c.layer_ids) +
                      " do not match the trace's stored layers " + list(meta.layer_ids));
  }
  if (c.num_kv_heads != meta.num_kv_heads || c.head_dim != meta.head_dim) {
    throw FormatError(ctx + ": calibrated for " + std::to_string(c.num_kv_heads) + " KV heads x " +
                      std::to_string(c.head_dim) + " channels, but the trace has " +
                      std::to_string(meta.num_kv_heads) + " x " + std::to_string(meta.head_dim));
  }
  const size_t L = c.layer_ids.size(), D = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  const size_t U = static_cast<size_t>(o.units(meta)), du = static_cast<size_t>(o.unit_dim(meta));
  if (o.group < 1 || du % static_cast<size_t>(o.group) != 0) {
    throw FormatError(ctx + ": group=" + std::to_string(o.group) + " does not divide " +
                      std::to_string(du) + " channels");
  }

  const std::vector<int64_t> tokens = read_vector<int64_t>(root, "tokens", H5T_NATIVE_INT64, ctx);
  expect_size(tokens.size(), L, "tokens", ctx);
  c.stats.resize(L);
  c.layers.resize(L);
  for (int side = 0; side < 2; ++side) {
    const std::string p = side == 0 ? "k_" : "v_";
    const auto mn = read_vector<float>(root, p + "min", H5T_NATIVE_FLOAT, ctx);
    const auto mx = read_vector<float>(root, p + "max", H5T_NATIVE_FLOAT, ctx);
    const auto perm = h5::read_int32_vector(root, p + "perm", ctx);
    const auto groups = h5::read_int32_vector(root, p + "groups", ctx);
    const auto starts = h5::read_int32_vector(root, p + "starts", ctx);
    const auto clip = read_vector<float>(root, p + "clip", H5T_NATIVE_FLOAT, ctx);
    expect_size(mn.size(), L * D, p + "min", ctx);
    expect_size(mx.size(), L * D, p + "max", ctx);
    expect_size(perm.size(), L * U * du, p + "perm", ctx);
    expect_size(groups.size(), L * U, p + "groups", ctx);
    size_t total_groups = 0;
    for (int32_t g : groups) {
      if (g < 1 || static_cast<size_t>(g) > du) {
        throw FormatError(ctx + ": '" + p + "groups' holds an impossible group count");
      }
      total_groups += static_cast<size_t>(g);
    }
    expect_size(starts.size(), total_groups + L * U, p + "starts", ctx);
    expect_size(clip.size(), o.clip_search ? total_groups : 0, p + "clip", ctx);
    size_t start_at = 0, clip_at = 0;
    for (size_t l = 0; l < L; ++l) {
      SkvqLayerStats& s = c.stats[l];
      s.tokens = tokens[l];
      (side == 0 ? s.k_min : s.v_min).assign(mn.begin() + l * D, mn.begin() + (l + 1) * D);
      (side == 0 ? s.k_max : s.v_max).assign(mx.begin() + l * D, mx.begin() + (l + 1) * D);
      for (size_t u = 0; u < U; ++u) {
        SkvqGrouping g;
        const size_t unit = l * U + u;
        g.perm.assign(perm.begin() + unit * du, perm.begin() + (unit + 1) * du);
        std::vector<char> seen(du, 0);
        for (int32_t ch : g.perm) {
          if (ch < 0 || static_cast<size_t>(ch) >= du || seen[ch]) {
            throw FormatError(ctx + ": '" + p + "perm' is not a permutation in layer slot " +
                              std::to_string(l));
          }
          seen[ch] = 1;
        }
        const size_t ng = static_cast<size_t>(groups[unit]);
        g.starts.assign(starts.begin() + start_at, starts.begin() + start_at + ng + 1);
        start_at += ng + 1;
        bool ok = g.starts.front() == 0 && static_cast<size_t>(g.starts.back()) == du;
        for (size_t i = 0; i + 1 < g.starts.size(); ++i) ok = ok && g.starts[i] < g.starts[i + 1];
        if (!ok) {
          throw FormatError(ctx + ": '" + p +
                            "starts' are not increasing group boundaries in "
                            "layer slot " +
                            std::to_string(l));
        }
        if (o.clip_search) {
          g.clip.assign(clip.begin() + clip_at, clip.begin() + clip_at + ng);
          clip_at += ng;
          for (float a : g.clip) {
            if (!(a > 0.f && a <= 1.f)) throw FormatError(ctx + ": clip ratio out of (0, 1]");
          }
        }
        (side == 0 ? c.layers[l].k : c.layers[l].v).push_back(std::move(g));
      }
    }
  }
  return c;
}

}  // namespace kvsim
