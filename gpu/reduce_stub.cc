// Build without NCCL (gpu/reduce.h): arguments are checked, then kvsim::BackendUnavailable.
#include <span>
#include <utility>

#include "gpu/reduce.h"
#include "gpu/validate.h"
#include "sim/base/errors.h"

namespace kvsim::gpu {
namespace {

[[noreturn]] void no_nccl() {
  throw kvsim::BackendUnavailable(
      "this kvsim build has no NCCL support: gpu/CMakeLists.txt looks for nccl.h and libnccl in "
      "the CUDA toolkit (/usr/local/cuda/include, /usr/local/cuda/lib64 or lib) when CUDA is "
      "enabled; install NCCL there, or reduce the metric sums with MPI on the host");
}

}  // namespace

struct MetricReducer::Impl {};

bool nccl_compiled() { return false; }

NcclUniqueId nccl_unique_id() { no_nccl(); }

MetricReducer::MetricReducer(const NcclUniqueId&, int rank, int world_size, int device) {
  detail::validate_reducer("gpu::MetricReducer", rank, world_size, device);
  no_nccl();
}

MetricReducer::~MetricReducer() = default;
MetricReducer::MetricReducer(MetricReducer&&) noexcept = default;
MetricReducer& MetricReducer::operator=(MetricReducer&&) noexcept = default;

void MetricReducer::sum(std::span<double>) { no_nccl(); }

}  // namespace kvsim::gpu
