// CPU reference implementations of the replay hot-path kernels. They define the semantics that
// the GPU launchers in gpu/kernels.h reproduce, take the same arguments (host pointers here,
// device pointers there), and accept exactly the same inputs (gpu/validate.h): any bad size,
// null pointer or unsupported head_dim throws kvsim::ConfigError. Outputs must not overlap
// inputs. Buffers are dense, row-major, with the shapes given next to each pointer.
#pragma once

#include <cstdint>

#include "gpu/packing.h"
#include "gpu/replay_types.h"

namespace kvsim::gpu::cpu_reference {

#include "gpu/kernel_declarations.inc"  // IWYU pragma: export

}  // namespace kvsim::gpu::cpu_reference
