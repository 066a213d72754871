// The generic 2-D k-means (policies/kmeans.h); its use for SKVQ's channel groups is tested in
// test_skvq.cc.
#include <gtest/gtest.h>

#include <vector>

#include "policies/kmeans.h"
#include "sim/base/errors.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

// Three well-separated blobs around centres of different ranges (y - x): 50 points of range
// 1, 5 of range 8 and 5 of range 7. The sorted-quantile seeding puts two centres into the big
// blob and converges to a poor optimum (the two small blobs merged), so the result comes from
// a k-means++ restart, whose centres appear in random order.
struct Blobs {
  std::vector<double> x, y;
  std::vector<int> blob;  // which blob each point came from
};

Blobs three_blobs() {
  const double cx[3] = {0.0, -4.0, -1.0}, cy[3] = {1.0, 4.0, 6.0};
  Blobs b;
  Rng rng(7);
  for (int i = 0; i < 60; ++i) {
    const int k = i % 6 == 1 ? 1 : i % 6 == 4 ? 2 : 0;  // interleaved: input order says nothing
    b.x.push_back(cx[k] + 0.1 * (rng.uniform() - 0.5));
    b.y.push_back(cy[k] + 0.1 * (rng.uniform() - 0.5));
    b.blob.push_back(k);
  }
  return b;
}

// The labels are numbered by the centroids' range, whichever seeding won and in whatever order
// it found the clusters: blob 0 (range 1) -> 0, blob 2 (range 7) -> 1, blob 1 (range 8) -> 2.
TEST(Kmeans2d, LabelsFollowTheCentroidOrderForEverySeed) {
  const Blobs b = three_blobs();
  const int want[3] = {0, 2, 1};
  for (const KmeansOptions options :
       {KmeansOptions{.seed = 1, .restarts = 3}, KmeansOptions{.seed = 2, .restarts = 10},
        KmeansOptions{.seed = 99, .restarts = 10, .max_iterations = 5}}) {
    const std::vector<int> labels = kmeans_2d(b.x, b.y, 3, options);
    ASSERT_EQ(labels.size(), b.x.size());
    for (size_t i = 0; i < labels.size(); ++i) {
      EXPECT_EQ(labels[i], want[b.blob[i]]) << "point " << i << ", seed " << options.seed;
    }
  }
}

// Without restarts the sorted-quantile seeding alone decides: the poor optimum above, in which
// the two small blobs share a cluster (the restarts are what finds the good one).
TEST(Kmeans2d, QuantileSeedingAloneMergesTheSmallBlobs) {
  const Blobs b = three_blobs();
  const std::vector<int> labels = kmeans_2d(b.x, b.y, 3, KmeansOptions{.seed = 1, .restarts = 0});
  int small_label = -1;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (b.blob[i] == 0) continue;
    if (small_label < 0) small_label = labels[i];
    EXPECT_EQ(labels[i], small_label) << "point " << i;
  }
}

// More clusters than points: every point is its own cluster, numbered by range then x.
TEST(Kmeans2d, MoreClustersThanPointsGivesOneClusterPerPoint) {
  const std::vector<double> x = {0.0, -3.0, 1.0}, y = {5.0, 0.0, 2.0};  // ranges 5, 3, 1
  EXPECT_EQ(kmeans_2d(x, y, 10, KmeansOptions{.seed = 3}), (std::vector<int>{2, 1, 0}));
  EXPECT_TRUE(kmeans_2d({}, {}, 4, KmeansOptions{}).empty());
}

TEST(Kmeans2d, RejectsInvalidOptions) {
  const std::vector<double> x = {0.0, 1.0}, y = {1.0, 2.0};
  EXPECT_ANY_THROW(kmeans_2d(x, y, 2, KmeansOptions{.max_iterations = 0}));
  EXPECT_ANY_THROW(kmeans_2d(x, y, 2, KmeansOptions{.restarts = -1}));
  EXPECT_ANY_THROW(kmeans_2d(x, std::vector<double>{1.0}, 2, KmeansOptions{}));
}

}  // namespace
}  // namespace kvsim
