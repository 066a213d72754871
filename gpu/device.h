// Whether the CUDA backend is usable: compiled in (a build-time fact) and a GPU visible to
// this process (a run-time fact). Everything that needs a GPU calls require_cuda() first so
// that a missing backend is a clear kvsim::BackendUnavailable, never a crash.
#pragma once

#include <string>

#include "sim/base/errors.h"

namespace kvsim::gpu {

// A CUDA runtime call failed on a machine where the backend is otherwise available (out of
// device memory, a kernel launch failure, ...). The message names the call and the CUDA error.
class CudaError : public kvsim::Error {
 public:
  using kvsim::Error::Error;
};

// True when this build contains the CUDA kernels (nvcc was found and KVSIM_ENABLE_CUDA was
// not OFF at configure time).
bool cuda_compiled();

// True when cuda_compiled() and the CUDA runtime reports at least one usable device. Never
// throws: a missing driver or device is reported as false. The probe runs once per process.
bool cuda_device_available();

// Number of visible CUDA devices (0 without CUDA or a driver). Never throws.
int cuda_device_count();

// One line describing the backend, e.g. "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB),
// CUDA runtime 13.0, driver 13.0", or why there is none.
std::string device_description();

// Throws kvsim::BackendUnavailable unless cuda_device_available(). The message says whether
// the build lacks CUDA (rebuild) or the machine lacks a visible GPU (with the CUDA error).
void require_cuda();

}  // namespace kvsim::gpu
