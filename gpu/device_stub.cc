// Build without CUDA: device.h and device_buffer.h report the backend as unavailable. Every
// entry point that needs a GPU throws kvsim::BackendUnavailable through require_cuda().
#include <cstddef>
#include <cstdint>
#include <string>

#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "sim/base/errors.h"

namespace kvsim::gpu {

bool cuda_compiled() { return false; }

bool cuda_device_available() { return false; }

int cuda_device_count() { return 0; }

std::string device_description() { return "CUDA not compiled into this build"; }

void require_cuda() {
  throw kvsim::BackendUnavailable(
      "this kvsim build has no CUDA support, so the GPU backend is unavailable: rebuild with "
      "the CUDA toolkit's nvcc present (on the PATH or via -DCMAKE_CUDA_COMPILER=/path/to/nvcc) "
      "and -DKVSIM_ENABLE_CUDA=ON, or use a CPU backend");
}

void* device_alloc(std::size_t) {
  require_cuda();
  return nullptr;
}

void device_free(void*) noexcept {}

void copy_host_to_device(void*, const void*, std::size_t) { require_cuda(); }

void copy_device_to_host(void*, const void*, std::size_t) { require_cuda(); }

void copy_device_to_device(void*, const void*, std::size_t) { require_cuda(); }

void device_synchronize() { require_cuda(); }

void fill_uniform(float*, std::size_t, std::uint64_t, float, float) { require_cuda(); }

DeviceTimer::DeviceTimer() { require_cuda(); }

DeviceTimer::~DeviceTimer() = default;

void DeviceTimer::start() { require_cuda(); }

double DeviceTimer::stop() {
  require_cuda();
  return 0.0;
}

}  // namespace kvsim::gpu
