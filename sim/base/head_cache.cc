#include "sim/base/head_cache.h"

#include <algorithm>

#include "sim/base/errors.h"

namespace kvsim {

int64_t HeadCache::find(int32_t position) const {
  auto it = std::lower_bound(positions.begin(), positions.end(), position);
  if (it == positions.end() || *it != position) return -1;
  return it - positions.begin();
}

void HeadCache::append(int32_t position, const float* key, const float* value) {
  KVSIM_CHECK(positions.empty() || positions.back() < position);
  positions.push_back(position);
  keys.insert(keys.end(), key, key + head_dim);
  values.insert(values.end(), value, value + head_dim);
}

void HeadCache::remove(std::span<const int32_t> sorted_positions) {
  if (sorted_positions.empty()) return;
  size_t write = 0, drop = 0;
  const size_t d = head_dim;
  for (size_t read = 0; read < positions.size(); ++read) {
    if (drop < sorted_positions.size() && positions[read] == sorted_positions[drop]) {
      ++drop;
      continue;
    }
    if (write != read) {
      positions[write] = positions[read];
      std::copy_n(keys.begin() + read * d, d, keys.begin() + write * d);
      std::copy_n(values.begin() + read * d, d, values.begin() + write * d);
    }
    ++write;
  }
  KVSIM_CHECK_MSG(drop == sorted_positions.size(), "removing positions not in the cache");
  positions.resize(write);
  keys.resize(write * d);
  values.resize(write * d);
}

}  // namespace kvsim
