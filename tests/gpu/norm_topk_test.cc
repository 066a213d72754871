// Key norms and top-k selection for L2-norm eviction: the CPU reference against hand-worked
// selections (ties both ways) and a brute-force sort (always run), and the GPU against the
// reference (skipped without a CUDA device).
//
// Tolerance: none on the device. The squared norms are summed in double in the documented
// order on both sides (x^2 of a float is exact in double, so fused and separate multiply-adds
// agree), sqrt is correctly rounded on both, so norms are bit-identical and the selection --
// made on the double sums -- is the same set; kept positions are compared exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu/cpu_reference.h"
#include "gpu/device.h"
#include "gpu/device_buffer.h"
#include "gpu/kernels.h"
#include "sim/base/errors.h"
#include "tests/gpu/test_util.h"

namespace kvsim::gpu {
namespace {

using testing::random_uniform;

struct Selection {
  std::vector<float> norms;
  std::vector<std::int32_t> kept;
};

Selection select_cpu(const std::vector<float>& k, int heads, std::int64_t n, int d,
                     std::int64_t keep, TiePreference ties) {
  Selection s{std::vector<float>(static_cast<std::size_t>(heads * n)),
              std::vector<std::int32_t>(static_cast<std::size_t>(heads * keep))};
  cpu_reference::key_norms_topk(k.data(), heads, n, d, keep, ties, s.norms.data(), s.kept.data());
  return s;
}

// Norms [5, 0, 1, 13]: the two smallest are positions 1 and 2, reported ascending.
TEST(CpuNormTopK, HandWorked) {
  const std::vector<float> k = {3, 4, 0, 0, 1, 0, 5, 12};
  const Selection s = select_cpu(k, 1, 4, 2, 2, TiePreference::kLowerIndex);
  EXPECT_EQ(s.norms, (std::vector<float>{5.0f, 0.0f, 1.0f, 13.0f}));
  EXPECT_EQ(s.kept, (std::vector<std::int32_t>{1, 2}));
}

// Rows A B A C B A with |A| < |B| < |C|: the three A's tie, so do the two B's.
TEST(CpuNormTopK, TiesFollowThePreference) {
  const std::array<float, 2> a = {1, 1}, b = {1, 2}, c = {3, 3};
  std::vector<float> k;
  for (const auto* row : {&a, &b, &a, &c, &b, &a}) k.insert(k.end(), row->begin(), row->end());
  auto kept = [&](std::int64_t keep, TiePreference ties) {
    return select_cpu(k, 1, 6, 2, keep, ties).kept;
  };
  EXPECT_EQ(kept(2, TiePreference::kLowerIndex), (std::vector<std::int32_t>{0, 2}));
  EXPECT_EQ(kept(2, TiePreference::kHigherIndex), (std::vector<std::int32_t>{2, 5}));
  EXPECT_EQ(kept(3, TiePreference::kHigherIndex), (std::vector<std::int32_t>{0, 2, 5}));
  EXPECT_EQ(kept(4, TiePreference::kLowerIndex), (std::vector<std::int32_t>{0, 1, 2, 5}));
  EXPECT_EQ(kept(4, TiePreference::kHigherIndex), (std::vector<std::int32_t>{0, 2, 4, 5}));
  EXPECT_EQ(kept(6, TiePreference::kLowerIndex), (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5}));
}

// The documented summation order, written out again: 32 strided partial sums and a butterfly.
double squared_norm_documented(const float* x, int d) {
  std::array<double, 32> p{};
  for (int l = 0; l < 32; ++l) {
    for (int c = l; c < d; c += 32) p[l] += static_cast<double>(x[c]) * x[c];
  }
  for (int m = 16; m >= 1; m /= 2) {
    std::array<double, 32> q{};
    for (int l = 0; l < 32; ++l) q[l] = p[l] + p[l ^ m];
    p = q;
  }
  return p[0];
}

// Random keys: norms equal float(sqrt(sum)) of the documented order, within one float rounding
// of the naive sequential sum, and the selection equals a brute-force stable sort.
TEST(CpuNormTopK, MatchesBruteForceOnRandomKeys) {
  const int heads = 3, d = 40;
  const std::int64_t n = 501;
  const std::vector<float> k = random_uniform(static_cast<std::size_t>(heads * n * d), 4, -2, 2);
  for (std::int64_t keep : {std::int64_t{0}, std::int64_t{1}, std::int64_t{250}, n}) {
    for (TiePreference ties : {TiePreference::kLowerIndex, TiePreference::kHigherIndex}) {
      const Selection s = select_cpu(k, heads, n, d, keep, ties);
      for (int h = 0; h < heads; ++h) {
        std::vector<double> sq(static_cast<std::size_t>(n));
        for (std::int64_t t = 0; t < n; ++t) {
          const float* x = k.data() + (h * n + t) * d;
          sq[t] = squared_norm_documented(x, d);
          ASSERT_EQ(s.norms[h * n + t], static_cast<float>(std::sqrt(sq[t])));
          double naive = 0;
          for (int c = 0; c < d; ++c) naive += static_cast<double>(x[c]) * x[c];
          EXPECT_NEAR(s.norms[h * n + t], std::sqrt(naive), 1.2e-7 * std::sqrt(naive));
        }
        std::vector<std::int32_t> order(static_cast<std::size_t>(n));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](std::int32_t x, std::int32_t y) {
          return sq[x] < sq[y];  // stable: equal sums keep ascending positions
        });
        if (ties == TiePreference::kHigherIndex) {
          // Among equal sums, higher positions first: reverse each run of equal values.
          for (std::size_t i = 0; i < order.size();) {
            std::size_t j = i;
            while (j < order.size() && sq[order[j]] == sq[order[i]]) ++j;
            std::reverse(order.begin() + static_cast<std::ptrdiff_t>(i),
                         order.begin() + static_cast<std::ptrdiff_t>(j));
            i = j;
          }
        }
        std::vector<std::int32_t> want(order.begin(), order.begin() + keep);
        std::sort(want.begin(), want.end());
        const std::vector<std::int32_t> got(s.kept.begin() + h * keep,
                                            s.kept.begin() + (h + 1) * keep);
        ASSERT_EQ(got, want) << "head " << h << " keep " << keep;
      }
    }
  }
}

TEST(CpuNormTopK, RejectsBadArguments) {
  std::vector<float> k(64, 1.0f), norms(16);
  std::vector<std::int32_t> kept(16);
  auto call = [&](int heads, std::int64_t n, int d, std::int64_t keep, std::int32_t* out) {
    cpu_reference::key_norms_topk(k.data(), heads, n, d, keep, TiePreference::kLowerIndex,
                                  norms.data(), out);
  };
  EXPECT_NO_THROW(call(1, 8, 8, 4, kept.data()));
  EXPECT_NO_THROW(call(1, 8, 8, 0, nullptr));  // nothing to keep: kept may be null
  EXPECT_THROW(call(0, 8, 8, 4, kept.data()), ConfigError);
  EXPECT_THROW(call(1, 8, 0, 4, kept.data()), ConfigError);
  EXPECT_THROW(call(1, 8, 8, 9, kept.data()), ConfigError);  // keep > n
  EXPECT_THROW(call(1, 8, 8, -1, kept.data()), ConfigError);
  EXPECT_THROW(call(1, 8, 8, 4, nullptr), ConfigError);
  EXPECT_THROW(call(1, std::int64_t{1} << 31, 8, 4, kept.data()), ConfigError);  // int32 positions
  // The GPU launcher checks the same way before touching the backend.
  EXPECT_THROW(
      key_norms_topk(k.data(), 1, 8, 8, 9, TiePreference::kLowerIndex, norms.data(), kept.data()),
      ConfigError);
}

TEST(CpuNormTopK, GpuThrowsBackendUnavailableWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is present";
  std::vector<float> k(64, 1.0f), norms(8);
  std::vector<std::int32_t> kept(4);
  EXPECT_THROW(
      key_norms_topk(k.data(), 1, 8, 8, 4, TiePreference::kLowerIndex, norms.data(), kept.data()),
      BackendUnavailable);
}

// --- GPU against the CPU reference -----------------------------------------------------------

struct TopKCase {
  int heads;
  std::int64_t tokens;
  int head_dim;
  std::int64_t keep;
  int distinct_rows;  // 0: random keys; k > 0: every row is one of k patterns (many exact ties)
};

class GpuNormTopK : public ::testing::TestWithParam<TopKCase> {};

std::vector<float> topk_keys(const TopKCase& c, std::uint32_t seed) {
  std::vector<float> k =
      random_uniform(static_cast<std::size_t>(c.heads * c.tokens * c.head_dim), seed, -3, 3);
  if (c.distinct_rows > 0) {
    std::mt19937 rng(seed + 1);
    std::uniform_int_distribution<std::int64_t> pick(0, c.distinct_rows - 1);
    for (std::int64_t r = 0; r < c.heads * c.tokens; ++r) {
      const std::int64_t src = pick(rng);  // copy one of the first distinct_rows rows
      std::copy_n(k.begin() + src * c.head_dim, c.head_dim, k.begin() + r * c.head_dim);
    }
  }
  return k;
}

TEST_P(GpuNormTopK, IdenticalToCpu) {
  KVSIM_SKIP_WITHOUT_CUDA_DEVICE();
  const TopKCase c = GetParam();
  const std::vector<float> k = topk_keys(c, 12);
  DeviceBuffer<float> d_k{std::span<const float>(k)};
  DeviceBuffer<float> d_norms(static_cast<std::size_t>(c.heads * c.tokens));
  DeviceBuffer<std::int32_t> d_kept(static_cast<std::size_t>(c.heads * c.keep));
  for (TiePreference ties : {TiePreference::kLowerIndex, TiePreference::kHigherIndex}) {
    const Selection ref = select_cpu(k, c.heads, c.tokens, c.head_dim, c.keep, ties);
    key_norms_topk(d_k.data(), c.heads, c.tokens, c.head_dim, c.keep, ties, d_norms.data(),
                   c.keep > 0 ? d_kept.data() : nullptr);
    const std::vector<float> norms = d_norms.to_host();
    for (float v : norms) ASSERT_TRUE(std::isfinite(v));
    EXPECT_EQ(norms, ref.norms);
    EXPECT_EQ(d_kept.to_host(), ref.kept)
        << (ties == TiePreference::kLowerIndex ? "lower" : "higher") << " index first";
  }
}

// One token; odd sizes; head_dim below the warp width; keep = n and keep = 0; heavy ties (rows
// drawn from 5 or 300 patterns) decided by position both ways; 32k and 128k tokens per head.
INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuNormTopK,
    ::testing::Values(TopKCase{1, 1, 64, 1, 0}, TopKCase{2, 37, 128, 10, 0},
                      TopKCase{3, 1000, 7, 999, 0}, TopKCase{1, 5000, 256, 5000, 0},
                      TopKCase{8, 4100, 128, 2050, 0}, TopKCase{2, 4100, 128, 0, 0},
                      TopKCase{4, 3000, 64, 1234, 5}, TopKCase{2, 10007, 128, 5003, 300},
                      TopKCase{4, 32768, 128, 16384, 0}, TopKCase{2, 131072, 64, 1000, 0}),
    [](const auto& info) {
      const TopKCase& c = info.param;
      return testing::case_name("h", c.heads, "_n", c.tokens, "_d", c.head_dim, "_k", c.keep, "_p",
                                c.distinct_rows);
    });

}  // namespace
}  // namespace kvsim::gpu
