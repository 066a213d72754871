// Internal to gpu/*.cu: CUDA error checking and small device queries. Not a public header.
#pragma once

#include <cuda_runtime.h>

#include "gpu/device.h"

namespace kvsim::gpu::detail {

// Throws CudaError naming the failed call, the CUDA error and where it happened.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);

// Number of streaming multiprocessors of the current device.
int current_device_sm_count();

// Whether the current device supports stream-ordered allocation (cudaMallocAsync).
bool current_device_supports_memory_pools();

// Throws ConfigError when `ptr` is a host pointer the device cannot access (plain malloc /
// new / stack memory); passing one to a kernel would otherwise kill the CUDA context with an
// illegal-address error. Device, managed and registered (pinned) host memory pass.
void check_device_pointer(const void* ptr, const char* what, const char* name);

}  // namespace kvsim::gpu::detail

#define KVSIM_CUDA_CHECK(call)                                                            \
  do {                                                                                    \
    const cudaError_t kvsim_cuda_err_ = (call);                                           \
    if (kvsim_cuda_err_ != cudaSuccess)                                                   \
      ::kvsim::gpu::detail::throw_cuda_error(kvsim_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a <<<...>>> launch: reports launch-configuration errors (not asynchronous faults).
#define KVSIM_CUDA_CHECK_LAUNCH(kernel_name)                                                      \
  do {                                                                                            \
    const cudaError_t kvsim_cuda_err_ = cudaGetLastError();                                       \
    if (kvsim_cuda_err_ != cudaSuccess)                                                           \
      ::kvsim::gpu::detail::throw_cuda_error(kvsim_cuda_err_, "launch of " kernel_name, __FILE__, \
                                             __LINE__);                                           \
  } while (0)
