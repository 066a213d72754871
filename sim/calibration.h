// The policies' CalibrationSource over a trace file: the adapter between
// TraceReader (trace/) and the policies' prepare hooks (policies/), plus
// TraceReader overloads of the policy-layer entry points that take one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "policies/calibration_source.h"
#include "policies/policy.h"
#include "policies/skvq_calibration.h"
#include "trace/trace.h"

namespace kvsim {

class TraceCalibrationSource : public CalibrationSource {
 public:
  explicit TraceCalibrationSource(const TraceReader& trace) : trace_(trace) {}
  const TraceMeta& meta() const override { return trace_.meta(); }
  int num_sequences() const override { return trace_.num_sequences(); }
  const SequenceInfo& sequence(int index) const override { return trace_.sequence(index); }
  LayerData read_layer(int sequence, int slot) const override {
    return trace_.read_layer(sequence, slot);
  }
  SkvqCalibration load_skvq_calibration(const std::string& path) const override;

 private:
  const TraceReader& trace_;
};

// prepare_policy() and calibrate_skvq() over a TraceReader.
std::vector<std::shared_ptr<const PolicyState>> prepare_policy(const PolicySpec& spec,
                                                               const TraceReader& trace);
SkvqCalibration calibrate_skvq(const TraceReader& trace, const std::vector<int>& sequences,
                               const Params& params);

}  // namespace kvsim
