// Host-side helpers for device memory, usable from plain C++ (no CUDA headers): raw
// allocation and copies, a typed RAII buffer, an event timer and a device-side random fill.
// Every function needs the CUDA backend and throws kvsim::BackendUnavailable (via
// require_cuda()) when it is missing, or kvsim::gpu::CudaError when a CUDA call fails.
//
// All work is issued on the legacy default stream, the stream the kernels in kernels.h use,
// so it is ordered with them. Device-to-host copies return once the data is on the host.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "sim/base/errors.h"

namespace kvsim::gpu {

// cudaMalloc; bytes == 0 returns nullptr.
void* device_alloc(std::size_t bytes);
// cudaFree; nullptr is ignored, errors are swallowed (it runs in destructors).
void device_free(void* ptr) noexcept;
void copy_host_to_device(void* dst_device, const void* src_host, std::size_t bytes);
void copy_device_to_host(void* dst_host, const void* src_device, std::size_t bytes);
// Asynchronous with respect to the host, ordered on the default stream.
void copy_device_to_device(void* dst_device, const void* src_device, std::size_t bytes);
// Waits for all work issued on the device so far.
void device_synchronize();

// Fills dst_device[0, count) with values uniform in [lo, hi), computed on the device from a
// counter-based hash of (seed, index): deterministic for a given seed, independent of launch
// configuration. For benchmarks and large tests where host-side generation would be slow.
void fill_uniform(float* dst_device,  // [count]
                  std::size_t count, std::uint64_t seed, float lo, float hi);

// Times work on the default stream with CUDA events.
class DeviceTimer {
 public:
  DeviceTimer();
  ~DeviceTimer();
  DeviceTimer(const DeviceTimer&) = delete;
  DeviceTimer& operator=(const DeviceTimer&) = delete;

  // Records the start event.
  void start();
  // Records the stop event, waits for it, and returns the seconds since start().
  double stop();

 private:
  void* start_ = nullptr;  // cudaEvent_t
  void* stop_ = nullptr;   // cudaEvent_t
};

// An owning, move-only array of `size` elements of T in device memory.
template <typename T>
class DeviceBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "DeviceBuffer holds trivially copyable types");

 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t size)
      : data_(static_cast<T*>(device_alloc(size * sizeof(T)))), size_(size) {}
  // Allocates and uploads a copy of `host`.
  explicit DeviceBuffer(std::span<const T> host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { device_free(data_); }

  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      device_free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::size_t bytes() const { return size_ * sizeof(T); }

  // Copies host.size() == size() elements to the device.
  void upload(std::span<const T> host) {
    if (host.size() != size_) throw ConfigError("DeviceBuffer::upload: size mismatch");
    copy_host_to_device(data_, host.data(), bytes());
  }
  // Copies all size() elements into host (host.size() == size()).
  void download(std::span<T> host) const {
    if (host.size() != size_) throw ConfigError("DeviceBuffer::download: size mismatch");
    copy_device_to_host(host.data(), data_, bytes());
  }
  std::vector<T> to_host() const {
    std::vector<T> host(size_);
    download(host);
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace kvsim::gpu
