#include "sim/calibration.h"

#include "sim/skvq_calibration_io.h"

namespace kvsim {

SkvqCalibration TraceCalibrationSource::load_skvq_calibration(const std::string& path) const {
  return ::kvsim::load_skvq_calibration(path, trace_.meta());
}

std::vector<std::shared_ptr<const PolicyState>> prepare_policy(const PolicySpec& spec,
                                                               const TraceReader& trace) {
  return prepare_policy(spec, static_cast<const CalibrationSource&>(TraceCalibrationSource(trace)));
}

SkvqCalibration calibrate_skvq(const TraceReader& trace, const std::vector<int>& sequences,
                               const Params& params) {
  return calibrate_skvq(TraceCalibrationSource(trace), sequences, params);
}

}  // namespace kvsim
