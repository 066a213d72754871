// What a policy's prepare hook (PolicyInfo::prepare) may read: the trace's
// metadata and raw layers, for calibration held out from the scored tokens,
// and the calibration files its parameters name. Policies see this interface
// only; the sim layer implements it over TraceReader and HDF5
// (sim/calibration.h), so that nothing under policies/ depends on file I/O.
#pragma once

#include <string>

#include "sim/base/trace_types.h"

namespace kvsim {

struct SkvqCalibration;

class CalibrationSource {
 public:
  virtual ~CalibrationSource() = default;
  virtual const TraceMeta& meta() const = 0;
  virtual int num_sequences() const = 0;
  virtual const SequenceInfo& sequence(int index) const = 0;
  // One stored layer of one sequence, in float32 (throws like TraceReader::read_layer).
  virtual LayerData read_layer(int sequence, int slot) const = 0;
  // Reads an SKVQ calibration file (`skvq:calib=PATH`) and validates it against meta().
  virtual SkvqCalibration load_skvq_calibration(const std::string& path) const = 0;
};

}  // namespace kvsim
