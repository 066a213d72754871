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
void print_inspection(const TraceReader& trace, const InspectOptions& options, std::ostream& out);

}  // namespace kvsim
