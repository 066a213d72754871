// NCCL build of gpu/reduce.h (compiled when KVSIM_HAVE_NCCL; needs CUDA as well).
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <cstring>
#include <span>
#include <sstream>
#include <string>
#include <utility>

#include "gpu/cuda_check.cuh"
#include "gpu/device.h"
#include "gpu/reduce.h"
#include "gpu/validate.h"
#include "sim/base/errors.h"

static_assert(sizeof(ncclUniqueId) == sizeof(kvsim::gpu::NcclUniqueId::bytes),
              "NcclUniqueId must hold an ncclUniqueId");

namespace kvsim::gpu {
namespace {

void check_nccl(ncclResult_t result, const char* call) {
  if (result == ncclSuccess) return;
  std::ostringstream os;
  os << "NCCL error " << static_cast<int>(result) << " (" << ncclGetErrorString(result) << ") in "
     << call;
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') os << ": " << last;
  throw CudaError(os.str());
}

#define KVSIM_NCCL_CHECK(call) check_nccl((call), #call)

}  // namespace

struct MetricReducer::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  double* buffer = nullptr;  // device, `capacity` doubles
  std::size_t capacity = 0;
  int device = 0;

  ~Impl() {
    if (comm != nullptr) ncclCommDestroy(comm);
    if (buffer != nullptr) cudaFree(buffer);
    if (stream != nullptr) cudaStreamDestroy(stream);
    (void)cudaGetLastError();
  }
};

bool nccl_compiled() { return true; }

NcclUniqueId nccl_unique_id() {
  require_cuda();
  ncclUniqueId id;
  KVSIM_NCCL_CHECK(ncclGetUniqueId(&id));
  NcclUniqueId out;
  std::memcpy(out.bytes.data(), &id, sizeof(id));
  return out;
}

MetricReducer::MetricReducer(const NcclUniqueId& id, int rank, int world_size, int device)
    : rank_(rank), world_size_(world_size) {
  constexpr const char* kWhat = "gpu::MetricReducer";
  detail::validate_reducer(kWhat, rank, world_size, device);
  require_cuda();
  int count = 0;
  KVSIM_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device >= count) {
    throw ConfigError(std::string(kWhat) + ": device " + std::to_string(device) +
                      " is not present (" + std::to_string(count) + " visible)");
  }
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  KVSIM_CUDA_CHECK(cudaSetDevice(device));
  KVSIM_CUDA_CHECK(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  ncclUniqueId nid;
  std::memcpy(&nid, id.bytes.data(), sizeof(nid));
  KVSIM_NCCL_CHECK(ncclCommInitRank(&impl->comm, world_size, nid, rank));
  impl_ = std::move(impl);
}

MetricReducer::~MetricReducer() = default;
MetricReducer::MetricReducer(MetricReducer&&) noexcept = default;
MetricReducer& MetricReducer::operator=(MetricReducer&&) noexcept = default;

void MetricReducer::sum(std::span<double> values) {
  if (!impl_) throw ConfigError("gpu::MetricReducer::sum: moved-from reducer");
  if (values.empty()) return;
  Impl& s = *impl_;
  KVSIM_CUDA_CHECK(cudaSetDevice(s.device));
  if (values.size() > s.capacity) {
    if (s.buffer != nullptr) KVSIM_CUDA_CHECK(cudaFree(s.buffer));
    s.buffer = nullptr;
    s.capacity = 0;
    KVSIM_CUDA_CHECK(cudaMalloc(&s.buffer, values.size_bytes()));
    s.capacity = values.size();
  }
  KVSIM_CUDA_CHECK(cudaMemcpyAsync(s.buffer, values.data(), values.size_bytes(),
                                   cudaMemcpyHostToDevice, s.stream));
  KVSIM_NCCL_CHECK(
      ncclAllReduce(s.buffer, s.buffer, values.size(), ncclDouble, ncclSum, s.comm, s.stream));
  KVSIM_CUDA_CHECK(cudaMemcpyAsync(values.data(), s.buffer, values.size_bytes(),
                                   cudaMemcpyDeviceToHost, s.stream));
  KVSIM_CUDA_CHECK(cudaStreamSynchronize(s.stream));
}

}  // namespace kvsim::gpu
