// Deterministic k-means of 2-D points (SKVQ clusters channels by their (min, max) with it:
// policies/skvq_calibration.cc). Generic: nothing here knows of SKVQ.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvsim {

struct KmeansOptions {
  uint64_t seed = 0;         // of the k-means++ seedings
  int restarts = 10;         // k-means++ seedings (besides the sorted-quantile one)
  int max_iterations = 100;  // Lloyd iterations per seeding
};

// k-means of the points (x[i], y[i]) into at most k clusters: one sorted-quantile seeding
// (points ordered by y - x, then x; one centre per quantile) plus options.restarts k-means++
// seedings from options.seed, each refined by Lloyd iterations (at most
// options.max_iterations; ties go to the lower cluster, an empty cluster keeps its centre);
// the lowest inertia wins (the earliest among equals). Returns a label per point; the
// non-empty clusters are renumbered 0.. in order of their centroid's y - x, then x.
std::vector<int> kmeans_2d(std::span<const double> x, std::span<const double> y, int k,
                           const KmeansOptions& options);

}  // namespace kvsim

namespace kvsim {

// Lloyd's k-means of scalars into k centres (KVQuant's nuq levels): seeded at the
// (j + 1/2)/k quantiles of the sorted values, then at most max_iterations rounds of
// assignment to the nearest centre (a value midway goes to the lower) and centre = mean; an
// empty cluster keeps its centre. Returns the k centres, ascending. values must be non-empty.
std::vector<double> kmeans_1d(std::vector<double> values, int k, int max_iterations = 100);

}  // namespace kvsim
