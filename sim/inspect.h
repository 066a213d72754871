// `kvsim inspect`: the statistics the KV-compression papers build on, per layer
// and KV head: key norms and outlier channels, attention-sink mass, and the
// cosine similarity of adjacent layers.
#pragma once

#include <ostream>

#include "trace/trace.h"

namespace kvsim {

struct InspectOptions {
  int sequence = 0;
  int sinks = 4;              // leading tokens counted as sinks
  double outlier_factor = 4;  // a channel is an outlier if its max |k| exceeds this x the median
};

struct HeadStats {
  int layer = 0, kv_head = 0;
  double key_norm_mean = 0, key_norm_max = 0;
  int outlier_channels = 0;
  double sink_mass = 0;  // mean over the head's queries at decode steps of attention on sinks
  double adjacent_cosine = -2;  // mean cosine of keys with the previous stored layer (-2 = none)
};

std::vector<HeadStats> inspect_trace(const TraceReader& trace, const InspectOptions& options);

// `kvsim inspect --rope`: the pre-RoPE mode checked on a trace (methods.md, "Pre-RoPE mode"),
// per stored layer of one sequence. Every key is un-rotated and re-rotated (policies/rope.h,
// float32 in between, as a pre-RoPE policy stores it); `max_ulps` is the largest difference
// from the trace key in units in the last place of the stored dtype. `halves_cosine`: per KV
// head, the cosine of the mean pre-RoPE key of the sequence's first and second halves,
// averaged over heads; a wrong base or layout lowers it (the statistics drift with position).
// `post_rope_cosine` is the same on the trace (post-RoPE) keys, for comparison.
struct RopeCheck {
  int layer = 0;
  double theta = 0;
  double max_ulps = 0;
  double halves_cosine = 0, post_rope_cosine = 0;
};
std::vector<RopeCheck> check_rope(const TraceReader& trace, int sequence);
void print_rope_check(const TraceReader& trace, int sequence, std::ostream& out);
void print_inspection(const TraceReader& trace, const InspectOptions& options, std::ostream& out);

}  // namespace kvsim
