// SKVQ calibration (methods.md, "Channel reordering"): per-channel (min, max)
// statistics over calibration tokens, k-means of the channels on those 2-D
// points, the channel permutation that makes each cluster one quantization
// group, and (clip_search=true) a clip ratio per group searched on a grid.
//
// Calibration is held out from what is scored. The `skvq` policy either loads
// a file written by save_skvq_calibration() (`calib=PATH`) or calibrates
// sequence s on every other sequence of the trace (leave-one-out). The CLI
// (`kvsim calibrate`) calls calibrate_skvq() and save_skvq_calibration().
// Calibration files are HDF5, read and written in the sim layer
// (sim/skvq_calibration_io.h); policies reach them through CalibrationSource.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "policies/calibration_source.h"
#include "policies/clipped_quantizer.h"
#include "policies/params.h"
#include "sim/base/trace_types.h"

namespace kvsim {

// Channels quantized together: a KV head's head_dim channels (`head`), or all
// num_kv_heads * head_dim channels of a layer (`layer`, the official code's
// hidden-dimension grouping, where a group may span heads).
enum class SkvqScope { kHead, kLayer };

// The parameters of `skvq` that calibration depends on.
struct SkvqOptions {
  SkvqScope scope = SkvqScope::kHead;
  int group = 128;           // g: d_unit / g clusters (or contiguous groups of g)
  bool reorder = true;       // k-means channel reordering
  bool clip_search = false;  // per-group clip ratio from a grid, on calibration data
  double clip = 0.92;        // the unified ratio when clip_search=false
  BitWidth k_bits, v_bits;   // the clip search minimises the error at these widths
  MetaFormat meta = MetaFormat::kFp16;
  int sinks = 5;           // positions < sinks are left out of the statistics
  int calib_tokens = 512;  // tokens sampled, over all calibration sequences, for the search
  bool prerope = false;    // keys quantized (and calibrated) before RoPE (policies/rope.h)

  static SkvqOptions from_params(const Params& p);  // the `skvq` policy's parameters
  // Reordering matters only with more than one group per unit.
  bool reorders(const TraceMeta& meta) const { return reorder && unit_dim(meta) / group > 1; }
  bool needs_calibration(const TraceMeta& meta) const { return reorders(meta) || clip_search; }
  int unit_dim(const TraceMeta& meta) const;  // head_dim or num_kv_heads * head_dim
  int units(const TraceMeta& meta) const;     // num_kv_heads or 1
};

// The clip-ratio grid of clip_search: 1.00, 0.98, ..., 0.50.
std::vector<float> skvq_clip_grid();

// One side (K or V) of one scope unit: a permutation of the unit's channels and
// the groups it is cut into.
struct SkvqGrouping {
  std::vector<int32_t> perm;    // [d_unit] channel (within the unit) at each reordered slot
  std::vector<int32_t> starts;  // [groups + 1] group i = perm[starts[i] .. starts[i+1]), non-empty
  std::vector<float> clip;      // [groups] searched clip ratios; empty = the unified `clip`
  int groups() const { return static_cast<int>(starts.size()) - 1; }
};

struct SkvqLayerCalibration {
  std::vector<SkvqGrouping> k, v;  // [units]
};

// Statistics of one layer slot over some calibration tokens.
struct SkvqLayerStats {
  std::vector<float> k_min, k_max, v_min, v_max;  // [num_kv_heads * head_dim]
  int64_t tokens = 0;                             // tokens the min/max cover
  std::vector<float> k_sample, v_sample;          // [n_sample, num_kv_heads * head_dim]
  int64_t n_sample = 0;
};

struct SkvqCalibration {
  // Identity of the trace it was computed on, and its shape.
  std::string trace_id, model_name;
  std::vector<int> layer_ids;  // [L] original layer indices
  int num_kv_heads = 0, head_dim = 0;
  std::vector<int> sequences;  // calibration sequences of that trace
  SkvqOptions options;
  std::vector<SkvqLayerStats> stats;         // [L] min/max only (no samples)
  std::vector<SkvqLayerCalibration> layers;  // [L]
};

// ---------------------------------------------------------------------------
// Building blocks (exposed for tests).

// kmeans_2d (policies/kmeans.h) with a fixed seed: deterministic k-means of the
// points (x[i], y[i]) into at most k clusters:
// 10 k-means++ seedings from a fixed seed plus one sorted-quantile seeding,
// Lloyd iterations (at most 100, ties to the lower cluster), the lowest
// inertia wins. Returns a label per point; clusters are renumbered 0.. in
// order of their centroid's range (y - x), then x, and empty clusters dropped.
std::vector<int> skvq_kmeans(std::span<const double> x, std::span<const double> y, int k);

// Groups one unit's channels from their (min, max): k-means into
// mn.size() / group clusters (reorder) or contiguous groups of `group`.
// Channels of a cluster keep ascending order.
SkvqGrouping skvq_group_channels(std::span<const float> mn, std::span<const float> mx, int group,
                                 bool reorder);

// Min/max of every channel over positions >= options.sinks of one sequence,
// and n_sample evenly spaced tokens for the clip search. [slot] -> stats.
// With options.prerope the keys are taken before RoPE (R_p^-1 k at position p).
std::vector<SkvqLayerStats> collect_skvq_stats(const CalibrationSource& trace, int sequence,
                                               const SkvqOptions& options, int64_t n_sample);

// Tokens sampled per calibration sequence: ceil(calib_tokens / sequences).
int64_t skvq_samples_per_sequence(const SkvqOptions& options, size_t sequences);

// Calibrates one layer slot on the combined statistics of several sequences.
SkvqLayerCalibration calibrate_skvq_layer(const std::vector<const SkvqLayerStats*>& stats,
                                          const TraceMeta& meta, const SkvqOptions& options);

// Throws ConfigError when a loaded calibration was made with parameters that
// change its result (scope, group, reorder, clip_search, prerope; with
// clip_search also k_bits, v_bits and meta).
void check_skvq_calibration(const SkvqCalibration& calib, const SkvqOptions& options);

// ---------------------------------------------------------------------------
// Entry points for `kvsim calibrate`.

// Parses `key=val,...` against the `skvq` policy's parameters (e.g.
// "group=32,scope=layer"); throws ConfigError.
Params parse_skvq_params(const std::string& text);

// Calibrates every layer of `trace` on `sequences` (non-empty, in range; else
// ConfigError) with the `skvq` parameters `params`.
SkvqCalibration calibrate_skvq(const CalibrationSource& trace, const std::vector<int>& sequences,
                               const Params& params);

// Names used in calibration files and messages: "head"/"layer", "fp16"/"fp8".
std::string skvq_scope_name(SkvqScope scope);
std::string skvq_meta_name(MetaFormat meta);

}  // namespace kvsim
