// Sums vectors of doubles -- metric sums, bit counts -- across the GPUs of a node with NCCL.
//
// One rank (an MPI process, typically) per GPU. kvsim's replay shards run on CPU cores today;
// when they run on GPUs, each rank accumulates its metric sums on its own device and this helper
// reduces them, so that only one vector leaves the node. The header needs neither NCCL nor MPI:
// the communicator is bootstrapped from an NcclUniqueId whose bytes the caller distributes,
// with MPI for instance:
//
//   kvsim::gpu::NcclUniqueId id;
//   if (local_rank == 0) id = kvsim::gpu::nccl_unique_id();
//   MPI_Bcast(id.bytes.data(), static_cast<int>(id.bytes.size()), MPI_BYTE, 0, node_comm);
//   kvsim::gpu::MetricReducer reducer(id, local_rank, local_size, /*device=*/local_rank);
//   reducer.sum(sums);  // every rank now holds the element-wise total
//
// Built with NCCL only when gpu/CMakeLists.txt found nccl.h and libnccl in the CUDA toolkit
// (KVSIM_HAVE_NCCL); otherwise every entry point checks its arguments (kvsim::ConfigError) and
// then throws kvsim::BackendUnavailable. With NCCL built in, a machine without a visible GPU
// gets BackendUnavailable as well (from require_cuda()).
#pragma once

#include <array>
#include <memory>
#include <span>

namespace kvsim::gpu {

// True when this build contains the NCCL implementation.
bool nccl_compiled();

// The 128 bytes of an ncclUniqueId (NCCL_UNIQUE_ID_BYTES).
struct NcclUniqueId {
  std::array<char, 128> bytes{};
};

// Creates the identifier of a new communicator (call on one rank, share the bytes).
NcclUniqueId nccl_unique_id();

// One rank's handle on a NCCL communicator of `world_size` ranks, one GPU each.
class MetricReducer {
 public:
  // Joins the communicator `id` as `rank` (0 <= rank < world_size) using CUDA device `device`
  // (made current for the calling thread). Collective: returns once every rank has joined.
  // Bad arguments (rank out of range, world_size < 1, device < 0 or not present) throw
  // kvsim::ConfigError; NCCL or CUDA failures throw kvsim::gpu::CudaError.
  MetricReducer(const NcclUniqueId& id, int rank, int world_size, int device);
  ~MetricReducer();
  MetricReducer(MetricReducer&&) noexcept;
  MetricReducer& operator=(MetricReducer&&) noexcept;
  MetricReducer(const MetricReducer&) = delete;
  MetricReducer& operator=(const MetricReducer&) = delete;

  // In place, values[i] <- sum over the ranks of their values[i] (ncclAllReduce, ncclSum, in
  // double). Collective: every rank calls it with the same size. Returns when the totals are
  // on the host. An empty span is a no-op (and needs no matching call elsewhere).
  void sum(std::span<double> values);

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0;
  int world_size_ = 1;
};

}  // namespace kvsim::gpu
