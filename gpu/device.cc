// CUDA build of device.h plus the internal helpers declared in cuda_check.cuh: host code over
// the CUDA runtime API, compiled by the C++ compiler (kvsim_gpu_device, gpu/CMakeLists.txt).
#include "gpu/device.h"

#include <cuda_runtime.h>

#include <sstream>
#include <string>

#include "gpu/cuda_check.cuh"
#include "sim/base/errors.h"

namespace kvsim::gpu {
namespace {

struct Probe {
  cudaError_t error = cudaSuccess;  // result of cudaGetDeviceCount
  int device_count = 0;
};

// Asks the runtime once per process. A missing driver or device is an error code from
// cudaGetDeviceCount (cudaErrorNoDevice, cudaErrorInsufficientDriver, ...), not a crash.
const Probe& probe() {
  static const Probe result = [] {
    Probe p;
    p.error = cudaGetDeviceCount(&p.device_count);
    if (p.error != cudaSuccess) {
      p.device_count = 0;
      (void)cudaGetLastError();  // do not leave the error for an unrelated later check
    }
    return p;
  }();
  return result;
}

std::string version_string(int v) {  // 13000 -> "13.0"
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

std::string no_device_reason() {
  const Probe& p = probe();
  std::ostringstream os;
  if (p.error != cudaSuccess) {
    os << "cudaGetDeviceCount failed with " << cudaGetErrorName(p.error) << " ("
       << cudaGetErrorString(p.error) << ")";
    if (p.error == cudaErrorInsufficientDriver) {
      os << " -- no NVIDIA driver is loaded, or it is older than this CUDA runtime";
    }
  } else {
    os << "cudaGetDeviceCount reports 0 devices";
  }
  return os.str();
}

}  // namespace

bool cuda_compiled() { return true; }

int cuda_device_count() { return probe().error == cudaSuccess ? probe().device_count : 0; }

bool cuda_device_available() { return probe().error == cudaSuccess && probe().device_count > 0; }

std::string device_description() {
  if (!cuda_device_available()) return "CUDA built in, no device visible: " + no_device_reason();
  int device = 0;
  cudaDeviceProp prop{};
  int runtime = 0;
  int driver = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, device) != cudaSuccess ||
      cudaRuntimeGetVersion(&runtime) != cudaSuccess ||
      cudaDriverGetVersion(&driver) != cudaSuccess) {
    const cudaError_t err = cudaGetLastError();
    return std::string("CUDA device present, but its properties cannot be read: ") +
           cudaGetErrorString(err);
  }
  std::ostringstream os;
  os.precision(3);
  os << prop.name << " (sm_" << prop.major << prop.minor << ", " << prop.multiProcessorCount
     << " SMs, " << static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0)
     << " GiB), device " << device << " of " << probe().device_count << ", CUDA runtime "
     << version_string(runtime) << ", driver " << version_string(driver);
  return os.str();
}

void require_cuda() {
  if (cuda_device_available()) return;
  throw kvsim::BackendUnavailable(
      "the CUDA backend is built in, but no GPU device is visible to this process: " +
      no_device_reason() + ". Check nvidia-smi and CUDA_VISIBLE_DEVICES, or use a CPU backend.");
}

namespace detail {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  std::ostringstream os;
  os << "CUDA error " << cudaGetErrorName(err) << " (" << cudaGetErrorString(err) << ") in " << call
     << " at " << file << ":" << line;
  throw CudaError(os.str());
}

int current_device_sm_count() {
  int device = 0;
  int count = 0;
  KVSIM_CUDA_CHECK(cudaGetDevice(&device));
  KVSIM_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

bool current_device_supports_memory_pools() {
  int device = 0;
  int supported = 0;
  KVSIM_CUDA_CHECK(cudaGetDevice(&device));
  KVSIM_CUDA_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device));
  return supported != 0;
}

void check_device_pointer(const void* ptr, const char* what, const char* name) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw kvsim::ConfigError(std::string(what) + ": cannot query pointer `" + name +
                             "`: " + cudaGetErrorString(err));
  }
  if (attr.type == cudaMemoryTypeUnregistered) {
    throw kvsim::ConfigError(std::string(what) + ": `" + name +
                             "` is a host pointer; the GPU launchers need device memory "
                             "(see gpu/device_buffer.h) -- use gpu::cpu_reference for host data");
  }
}

}  // namespace detail
}  // namespace kvsim::gpu
