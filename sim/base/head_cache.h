// The per-(layer, kv head) cache the engine attends over, and the exact bits a
// policy stores for it. Plain data, shared by the policies and the engine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace kvsim {

// The cache the engine attends over for one (layer, kv head): the entries a
// policy keeps, in the form attention sees them (dequantized / restored).
// Rows are sorted by token position.
struct HeadCache {
  int head_dim = 0;
  std::vector<int32_t> positions;  // [n]
  std::vector<float> keys;         // [n, head_dim]
  std::vector<float> values;       // [n, head_dim]

  size_t size() const { return positions.size(); }
  // Row of `position`, or -1 when absent (binary search).
  int64_t find(int32_t position) const;
  float* key_row(size_t row) { return keys.data() + row * head_dim; }
  float* value_row(size_t row) { return values.data() + row * head_dim; }
  const float* key_row(size_t row) const { return keys.data() + row * head_dim; }
  const float* value_row(size_t row) const { return values.data() + row * head_dim; }
  void append(int32_t position, const float* key, const float* value);
  // Removes the rows of `sorted_positions` (ascending, all present).
  void remove(std::span<const int32_t> sorted_positions);
};

// Exact bits a policy stores for one (layer, kv head), K and V together.
struct MemoryBits {
  int64_t data = 0;  // payload as really packed: codes, fp16 values
  int64_t meta = 0;  // scales, zero points, indices, precision maps
  // Payload at its information-theoretic rate where that differs from the
  // packing (ternary codes: log2(3) bits instead of 2); < 0 means "= data".
  double ideal_data = -1;
  int64_t total() const { return data + meta; }
  double ideal_total() const {
    return (ideal_data < 0 ? static_cast<double>(data) : ideal_data) + meta;
  }
};

}  // namespace kvsim
