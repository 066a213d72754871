// Turns run-time sizes into compile-time template constants for the kernels.
#pragma once

#include <string>

#include "sim/base/errors.h"

namespace kvsim::gpu {

// Head dimensions with a compiled kernel instantiation.
inline constexpr int kSupportedHeadDims[] = {64, 128, 256};

inline constexpr bool is_supported_head_dim(int head_dim) {
  for (int d : kSupportedHeadDims) {
    if (d == head_dim) return true;
  }
  return false;
}

}  // namespace kvsim::gpu

// KVSIM_DISPATCH_HEAD_DIM(head_dim, kHeadDim, [&] { launch<kHeadDim>(...); });
// Runs the lambda with `kHeadDim` bound to a constexpr int equal to head_dim, for each value
// in kSupportedHeadDims; any other value throws kvsim::ConfigError. Returns the lambda's result.
#define KVSIM_DISPATCH_HEAD_DIM(VALUE, CONST_NAME, ...)                              \
  [&] {                                                                              \
    switch (VALUE) {                                                                 \
      case 64: {                                                                     \
        constexpr int CONST_NAME = 64;                                               \
        return __VA_ARGS__();                                                        \
      }                                                                              \
      case 128: {                                                                    \
        constexpr int CONST_NAME = 128;                                              \
        return __VA_ARGS__();                                                        \
      }                                                                              \
      case 256: {                                                                    \
        constexpr int CONST_NAME = 256;                                              \
        return __VA_ARGS__();                                                        \
      }                                                                              \
      default:                                                                       \
        throw ::kvsim::ConfigError("unsupported head_dim " + std::to_string(VALUE) + \
                                   " (supported: 64, 128, 256)");                    \
    }                                                                                \
  }()
