// Deterministic 2-D k-means (policies/kmeans.h).
#include "policies/kmeans.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <numeric>
#include <utility>

#include "sim/base/errors.h"
#include "sim/base/rng.h"

namespace kvsim {

namespace {

struct KmeansRun {
  std::vector<int> labels;
  std::vector<double> cx, cy;
  double inertia = 0;
};

KmeansRun lloyd(std::span<const double> x, std::span<const double> y, std::vector<double> cx,
                std::vector<double> cy, int max_iterations) {
  const size_t n = x.size(), k = cx.size();
  KmeansRun run;
  run.labels.assign(n, -1);
  for (int iter = 0; iter < max_iterations; ++iter) {
    bool changed = false;
    for (size_t i = 0; i < n; ++i) {
      int best = 0;
      double best_d = std::numeric_limits<double>::infinity();
      for (size_t c = 0; c < k; ++c) {
        const double dx = x[i] - cx[c], dy = y[i] - cy[c];
        const double dist = dx * dx + dy * dy;
        if (dist < best_d) {  // ties go to the lower cluster
          best_d = dist;
          best = static_cast<int>(c);
        }
      }
      if (run.labels[i] != best) {
        run.labels[i] = best;
        changed = true;
      }
    }
    if (!changed) break;
    std::vector<double> sx(k, 0), sy(k, 0);
    std::vector<int64_t> count(k, 0);
    for (size_t i = 0; i < n; ++i) {
      sx[run.labels[i]] += x[i];
      sy[run.labels[i]] += y[i];
      ++count[run.labels[i]];
    }
    for (size_t c = 0; c < k; ++c) {
      if (count[c] > 0) {  // an empty cluster keeps its centre
        cx[c] = sx[c] / static_cast<double>(count[c]);
        cy[c] = sy[c] / static_cast<double>(count[c]);
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const double dx = x[i] - cx[run.labels[i]], dy = y[i] - cy[run.labels[i]];
    run.inertia += dx * dx + dy * dy;
  }
  run.cx = std::move(cx);
  run.cy = std::move(cy);
  return run;
}

}  // namespace

std::vector<int> kmeans_2d(std::span<const double> x, std::span<const double> y, int k,
                           const KmeansOptions& options) {
  KVSIM_CHECK(x.size() == y.size());
  KVSIM_CHECK(options.restarts >= 0 && options.max_iterations >= 1);
  const size_t n = x.size();
  if (n == 0) return {};
  const size_t kk = static_cast<size_t>(std::clamp<int64_t>(k, 1, static_cast<int64_t>(n)));

  std::vector<KmeansRun> runs;
  // Sorted-quantile seeding: the points ordered by range, one centre per quantile.
  {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      const double ra = y[a] - x[a], rb = y[b] - x[b];
      return ra != rb ? ra < rb : x[a] < x[b];
    });
    std::vector<double> cx(kk), cy(kk);
    for (size_t c = 0; c < kk; ++c) {
      const size_t i = order[std::min(n - 1, (2 * c + 1) * n / (2 * kk))];
      cx[c] = x[i];
      cy[c] = y[i];
    }
    runs.push_back(lloyd(x, y, std::move(cx), std::move(cy), options.max_iterations));
  }
  // k-means++ seedings from a fixed seed.
  Rng rng(options.seed);
  for (int r = 0; r < options.restarts; ++r) {
    std::vector<double> cx, cy;
    const size_t first = rng.below(n);
    cx.push_back(x[first]);
    cy.push_back(y[first]);
    std::vector<double> d2(n);
    while (cx.size() < kk) {
      double total = 0;
      for (size_t i = 0; i < n; ++i) {
        double best = std::numeric_limits<double>::infinity();
        for (size_t c = 0; c < cx.size(); ++c) {
          const double dx = x[i] - cx[c], dy = y[i] - cy[c];
          best = std::min(best, dx * dx + dy * dy);
        }
        d2[i] = best;
        total += best;
      }
      size_t pick = 0;
      if (total > 0) {
        double u = rng.uniform() * total;
        pick = n - 1;
        for (size_t i = 0; i < n; ++i) {
          if (d2[i] > 0 && u < d2[i]) {
            pick = i;
            break;
          }
          u -= d2[i];
        }
      } else {
        pick = rng.below(n);  // every point is a centre already: duplicates end up empty
      }
      cx.push_back(x[pick]);
      cy.push_back(y[pick]);
    }
    runs.push_back(lloyd(x, y, std::move(cx), std::move(cy), options.max_iterations));
  }
  size_t best = 0;
  for (size_t r = 1; r < runs.size(); ++r) {
    if (runs[r].inertia < runs[best].inertia) best = r;
  }
  const KmeansRun& run = runs[best];

  // Renumber the non-empty clusters by centroid range, then centroid min.
  std::vector<int64_t> count(kk, 0);
  for (int l : run.labels) ++count[l];
  std::vector<int> used;
  for (size_t c = 0; c < kk; ++c) {
    if (count[c] > 0) used.push_back(static_cast<int>(c));
  }
  std::stable_sort(used.begin(), used.end(), [&](int a, int b) {
    const double ra = run.cy[a] - run.cx[a], rb = run.cy[b] - run.cx[b];
    return ra != rb ? ra < rb : run.cx[a] < run.cx[b];
  });
  std::vector<int> relabel(kk, -1);
  for (size_t i = 0; i < used.size(); ++i) relabel[used[i]] = static_cast<int>(i);
  std::vector<int> labels(n);
  for (size_t i = 0; i < n; ++i) labels[i] = relabel[run.labels[i]];
  return labels;
}

}  // namespace kvsim

namespace kvsim {

std::vector<double> kmeans_1d(std::vector<double> values, int k, int max_iterations) {
  KVSIM_CHECK(!values.empty() && k >= 1);
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  std::vector<double> prefix(n + 1, 0.0);  // sums of the sorted values: a cluster's mean in O(1)
  for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + values[i];
  std::vector<double> centres(k);
  for (int j = 0; j < k; ++j) {
    centres[j] = values[std::min(n - 1, static_cast<size_t>((j + 0.5) / k * n))];
  }
  for (int it = 0; it < max_iterations; ++it) {
    std::sort(centres.begin(), centres.end());
    bool moved = false;
    size_t lo = 0;
    for (int j = 0; j < k; ++j) {
      // Cluster j holds the values up to the midpoint with the next centre (inclusive).
      size_t hi = n;
      if (j + 1 < k) {
        const double mid = 0.5 * (centres[j] + centres[j + 1]);
        hi = static_cast<size_t>(std::upper_bound(values.begin() + lo, values.end(), mid) -
                                 values.begin());
      }
      if (hi > lo) {
        const double mean = (prefix[hi] - prefix[lo]) / static_cast<double>(hi - lo);
        if (mean != centres[j]) moved = true;
        centres[j] = mean;
      }
      lo = hi;
    }
    if (!moved) break;
  }
  std::sort(centres.begin(), centres.end());
  return centres;
}

}  // namespace kvsim
