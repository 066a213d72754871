// SKVQ calibration files (HDF5): the file I/O of policies/skvq_calibration.h,
// kept in the sim layer so that the policies never see HDF5.
#pragma once

#include <string>

#include "policies/skvq_calibration.h"
#include "sim/base/trace_types.h"

namespace kvsim {

// Writes an HDF5 calibration file (to `<path>.tmp.<pid>`, renamed when complete).
void save_skvq_calibration(const std::string& path, const SkvqCalibration& calib);

// Reads and validates a calibration file against the trace it will be used on:
// a missing or malformed dataset, or a layer/head/shape mismatch with `meta`,
// throws FormatError; an unreadable file IoError.
SkvqCalibration load_skvq_calibration(const std::string& path, const TraceMeta& meta);

}  // namespace kvsim
