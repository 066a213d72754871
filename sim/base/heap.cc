#include "sim/base/heap.h"

#include <malloc.h>

namespace kvsim {

// Transparent huge pages (madvise) would cut the remaining first-touch faults 512 times, but on
// the CI machine's VM zeroing fresh huge pages sometimes took 0.2-0.3 s of a 0.15 s replay
// (docs/performance.md): not used.
void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace kvsim
