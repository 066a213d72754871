// Without CUDA: the CUDA executor is unavailable (the host executor is always built).
#include "gpu/attention_executor.h"
#include "gpu/device.h"

namespace kvsim::gpu {

std::unique_ptr<AttentionExecutor> make_cuda_executor(int /*device*/) {
  require_cuda();  // throws BackendUnavailable: this build has no CUDA
  return nullptr;
}

size_t cuda_default_budget(int /*device*/) {
  require_cuda();
  return 0;
}

}  // namespace kvsim::gpu
