// The CPU attention backend (sim/base/attention_backend.h): float kernels of sim/base/attention.h,
// the replay engine's reference backend and its default.
#pragma once

#include "sim/base/attention_backend.h"

namespace kvsim {

// The process-wide CPU backend (stateless; safe to call from several threads at once).
const AttentionBackend& cpu_backend();

// First position of a window of `window` tokens (0 = no window) that ends at token t.
inline int64_t window_start(int window, int64_t t) {
  return window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
}

}  // namespace kvsim
