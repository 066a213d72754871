// Process-wide settings of glibc's allocator for the replay's allocation pattern.
#pragma once

namespace kvsim {

// A replay allocates and frees layer-sized buffers per unit (trace layers, exact scores,
// caches). By default glibc maps each large one afresh, returns it to the kernel when freed,
// and the kernel faults it in again page by page: a third of a small replay's time went to
// page faults. After this call large blocks come from the heap and stay there when freed (the
// peak is unchanged). For the kvsim executables (and their benchmarks), not for a library
// loaded into someone else's process.
void keep_freed_memory();

}  // namespace kvsim
