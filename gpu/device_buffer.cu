// CUDA build of device_buffer.h.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "gpu/cuda_check.cuh"
#include "gpu/device.h"
#include "gpu/device_buffer.h"

namespace kvsim::gpu {
namespace {

__device__ __forceinline__ std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__global__ void fill_uniform_kernel(float* __restrict__ dst, std::size_t count, std::uint64_t seed,
                                    float lo, float width) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const std::uint64_t bits = splitmix64(seed ^ (i * 0xD1B54A32D192ED03ull));
    const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    dst[i] = lo + width * u;
  }
}

}  // namespace

void* device_alloc(std::size_t bytes) {
  require_cuda();
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  KVSIM_CUDA_CHECK(cudaMalloc(&ptr, bytes));
  return ptr;
}

void device_free(void* ptr) noexcept {
  if (ptr == nullptr) return;
  if (cudaFree(ptr) != cudaSuccess) (void)cudaGetLastError();
}

void copy_host_to_device(void* dst_device, const void* src_host, std::size_t bytes) {
  require_cuda();
  if (bytes == 0) return;
  KVSIM_CUDA_CHECK(cudaMemcpy(dst_device, src_host, bytes, cudaMemcpyHostToDevice));
}

void copy_device_to_host(void* dst_host, const void* src_device, std::size_t bytes) {
  require_cuda();
  if (bytes == 0) return;
  KVSIM_CUDA_CHECK(cudaMemcpy(dst_host, src_device, bytes, cudaMemcpyDeviceToHost));
}

void copy_device_to_device(void* dst_device, const void* src_device, std::size_t bytes) {
  require_cuda();
  if (bytes == 0) return;
  KVSIM_CUDA_CHECK(cudaMemcpyAsync(dst_device, src_device, bytes, cudaMemcpyDeviceToDevice, 0));
}

void device_synchronize() {
  require_cuda();
  KVSIM_CUDA_CHECK(cudaDeviceSynchronize());
}

void fill_uniform(float* dst_device, std::size_t count, std::uint64_t seed, float lo, float hi) {
  require_cuda();
  if (count == 0) return;
  if (dst_device == nullptr) throw ConfigError("fill_uniform: dst_device is null");
  if (!(lo < hi)) throw ConfigError("fill_uniform: need lo < hi");
  detail::check_device_pointer(dst_device, "fill_uniform", "dst_device");
  constexpr int kThreads = 256;
  const std::size_t wanted = (count + kThreads - 1) / kThreads;
  const std::size_t cap = static_cast<std::size_t>(detail::current_device_sm_count()) * 32;
  const auto blocks = static_cast<unsigned>(wanted < cap ? wanted : cap);
  fill_uniform_kernel<<<blocks, kThreads>>>(dst_device, count, seed, lo, hi - lo);
  KVSIM_CUDA_CHECK_LAUNCH("fill_uniform_kernel");
}

DeviceTimer::DeviceTimer() {
  require_cuda();
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  KVSIM_CUDA_CHECK(cudaEventCreate(&start));
  const cudaError_t err = cudaEventCreate(&stop);
  if (err != cudaSuccess) {
    cudaEventDestroy(start);
    detail::throw_cuda_error(err, "cudaEventCreate(&stop)", __FILE__, __LINE__);
  }
  start_ = start;
  stop_ = stop;
}

DeviceTimer::~DeviceTimer() {
  if (start_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  if (stop_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}

void DeviceTimer::start() {
  KVSIM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(start_), 0));
}

double DeviceTimer::stop() {
  const auto stop = static_cast<cudaEvent_t>(stop_);
  KVSIM_CUDA_CHECK(cudaEventRecord(stop, 0));
  KVSIM_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.0f;
  KVSIM_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), stop));
  return static_cast<double>(ms) * 1e-3;
}

}  // namespace kvsim::gpu
