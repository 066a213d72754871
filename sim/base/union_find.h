// Disjoint sets over 0..n-1 (union-find with path halving): groups layer slots
// that must be replayed together (policies/registry.cc, sim/engine.cc).
#pragma once

#include <map>
#include <numeric>
#include <vector>

namespace kvsim {

class UnionFind {
 public:
  explicit UnionFind(int n) : parent_(n) { std::iota(parent_.begin(), parent_.end(), 0); }

  int find(int x) {
    while (parent_[x] != x) x = parent_[x] = parent_[parent_[x]];
    return x;
  }
  // Merges x's set into `into`'s: the root of `into`'s set stays the root.
  void unite(int x, int into) {
    const int root_into = find(into);
    parent_[find(x)] = root_into;
  }
  // The sets, each ascending, ordered by their root.
  std::vector<std::vector<int>> groups() {
    std::map<int, std::vector<int>> by_root;
    for (int x = 0; x < static_cast<int>(parent_.size()); ++x) by_root[find(x)].push_back(x);
    std::vector<std::vector<int>> out;
    for (auto& [root, members] : by_root) out.push_back(std::move(members));
    return out;
  }

 private:
  std::vector<int> parent_;
};

}  // namespace kvsim
