#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <tuple>
#include <vector>

#include "sim/base/attention.h"
#include "sim/base/rng.h"

namespace kvsim {
namespace {

std::vector<float> randn(size_t n, uint64_t seed, double scale = 1) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal() * scale);
  return v;
}

// The vectorised kernels against the double-precision reference, on random
// inputs at several shapes. Tolerance: float32 accumulation over d <= 256 terms
// and n <= 4100 softmax terms in a different order; 2e-5 relative to the
// output norm is ~100 ulps and catches any indexing or GQA error.
class AttentionKernels : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(AttentionKernels, MatchReference) {
  const auto [n, d, group] = GetParam();
  const auto q = randn(static_cast<size_t>(group) * d, 1 + n);
  const auto k = randn(static_cast<size_t>(n) * d, 2 + n, 1.5);
  const auto v = randn(static_cast<size_t>(n) * d, 3 + n);
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  std::vector<float> scores(static_cast<size_t>(group) * n), out(static_cast<size_t>(group) * d);
  score_rows(q.data(), group, k.data(), n, d, scale, scores.data());
  std::vector<double> lse(group);
  for (int j = 0; j < group; ++j) lse[j] = softmax_inplace(scores.data() + j * n, n);
  weighted_sum(scores.data(), group, v.data(), n, d, out.data());
  for (int j = 0; j < group; ++j) {
    std::vector<double> ref(d);
    const double ref_lse =
        cpu_reference::attend(q.data() + j * d, k.data(), v.data(), n, d, scale, ref.data());
    EXPECT_NEAR(lse[j], ref_lse, 1e-4 * std::max(1.0, std::fabs(ref_lse)));
    double diff = 0, norm = 0;
    for (int c = 0; c < d; ++c) {
      ASSERT_TRUE(std::isfinite(out[j * d + c]));
      diff += (out[j * d + c] - ref[c]) * (out[j * d + c] - ref[c]);
      norm += ref[c] * ref[c];
    }
    EXPECT_LE(std::sqrt(diff), 2e-5 * std::sqrt(norm) + 1e-7) << "query " << j;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernels,
                         ::testing::Values(std::make_tuple(1, 64, 1), std::make_tuple(7, 64, 4),
                                           std::make_tuple(257, 128, 4),
                                           std::make_tuple(1000, 128, 3),
                                           std::make_tuple(4100, 256, 5),
                                           std::make_tuple(33, 32, 8)));

TEST(AttentionKernels, GatheredScoresEqualContiguousScores) {
  const int d = 64, n = 50;
  const auto q = randn(2 * d, 9);
  const auto k = randn(static_cast<size_t>(n) * d, 10);
  std::vector<int32_t> rows = {0, 3, 4, 17, 49};
  std::vector<float> gathered(2 * rows.size()), all(2 * n);
  score_gathered(q.data(), 2, k.data(), rows, d, 0.5f, gathered.data());
  score_rows(q.data(), 2, k.data(), n, d, 0.5f, all.data());
  for (int j = 0; j < 2; ++j) {
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ(gathered[j * rows.size() + i], all[j * n + rows[i]]);
    }
  }
}

// fast_expf with its clamps and floor written out for vectorisation gives the bits of the
// std::max / std::min / std::floor form, on 4.3 million floats over the whole range (every
// 997th bit pattern: both signs, the clamps, the integers and half-integers of t).
float fast_expf_std_form(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  return expf_from_rounding(x, static_cast<int32_t>(std::floor(x * 1.44269504088896341f + 0.5f)));
}

TEST(AttentionKernels, FastExpEqualsItsStdFormBitwise) {
  std::vector<float> xs;
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 997) {
    const float x = std::bit_cast<float>(static_cast<uint32_t>(bits));
    if (std::isfinite(x)) xs.push_back(x);
  }
  for (float t = -130.f; t <= 130.f; t += 0.5f) xs.push_back((t - 0.5f) / 1.44269504088896341f);
  std::vector<float> got(xs.size());
#pragma omp simd
  for (size_t i = 0; i < xs.size(); ++i) got[i] = fast_expf(xs[i]);  // the vectorised form
  for (size_t i = 0; i < xs.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(fast_expf_std_form(xs[i])))
        << xs[i];
  }
}

// score_rows (tiles of 16 keys, a lane per key) and score_gathered (a key at a time, 16 channel
// lanes) sum in the same order by design (sim/base/attention.cc): equal to the bit at shapes
// with partial tiles, channel tails and every query-chunk size.
TEST(AttentionKernels, TiledScoresEqualPerKeyScoresBitwise) {
  for (const auto& [n, d, queries] :
       {std::tuple{1, 64, 1}, std::tuple{15, 64, 3}, std::tuple{17, 128, 4}, std::tuple{100, 72, 9},
        std::tuple{33, 8, 5}, std::tuple{64, 256, 8}}) {
    const auto q = randn(static_cast<size_t>(queries) * d, 11 + n, 2.0);
    const auto k = randn(static_cast<size_t>(n) * d, 12 + n, 3.0);
    std::vector<int32_t> rows(n);
    for (int i = 0; i < n; ++i) rows[i] = i;
    std::vector<float> tiled(static_cast<size_t>(queries) * n), per_key(tiled.size());
    score_rows(q.data(), queries, k.data(), n, d, 0.3f, tiled.data());
    score_gathered(q.data(), queries, k.data(), rows, d, 0.3f, per_key.data());
    for (size_t i = 0; i < tiled.size(); ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(tiled[i]), std::bit_cast<uint32_t>(per_key[i]))
          << "n " << n << " d " << d << " queries " << queries << " entry " << i;
    }
    // Pre-made tiles, over key ranges that start and end inside a tile.
    const KeyTiles tiles(k.data(), n, d);
    for (const int first : {0, std::min(1, n - 1), n / 2, n - 1}) {
      const int m = std::max(1, (n - first) * 2 / 3);  // ends inside a tile too
      std::vector<float> ranged(static_cast<size_t>(queries) * m);
      score_tiles(q.data(), queries, tiles, first, m, 0.3f, ranged.data());
      for (int j = 0; j < queries; ++j) {
        for (int i = 0; i < m; ++i) {
          ASSERT_EQ(std::bit_cast<uint32_t>(ranged[j * m + i]),
                    std::bit_cast<uint32_t>(per_key[j * n + first + i]))
              << "n " << n << " first " << first << " query " << j << " key " << i;
        }
      }
    }
  }
}

// weighted_sum keeps blocks of outputs in registers; every output is still the sum over rows
// in row order, as the plain loop below computes it: equal to the bit.
TEST(AttentionKernels, WeightedSumEqualsRowOrderSumBitwise) {
  for (const auto& [n, d, queries] :
       {std::tuple{1, 64, 1}, std::tuple{37, 64, 4}, std::tuple{300, 128, 5}, std::tuple{20, 72, 7},
        std::tuple{9, 8, 3}, std::tuple{50, 200, 8}}) {
    const auto p = randn(static_cast<size_t>(queries) * n, 21 + n);
    const auto v = randn(static_cast<size_t>(n) * d, 22 + n);
    std::vector<float> got(static_cast<size_t>(queries) * d), want(got.size(), 0.f);
    weighted_sum(p.data(), queries, v.data(), n, d, got.data());
    for (int j = 0; j < queries; ++j) {
      for (int i = 0; i < n; ++i) {
        for (int c = 0; c < d; ++c) want[j * d + c] += p[j * n + i] * v[i * d + c];
      }
    }
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
          << "n " << n << " d " << d << " queries " << queries << " entry " << i;
    }
  }
}

// Keys tiled ahead of time (a cache's final rows, kept across steps) give score_rows() the
// same scores as transposing every key, to the bit, wherever the kept tiles end; tiles grown by
// append() and cut by truncate() equal tiles made at once.
TEST(AttentionKernels, KnownTilesGiveTheSameScoresBitwise) {
  for (const auto& [n, d, queries] : {std::tuple{1, 64, 1}, std::tuple{47, 64, 4},
                                      std::tuple{100, 72, 9}, std::tuple{256, 128, 3}}) {
    const auto q = randn(static_cast<size_t>(queries) * d, 31 + n, 2.0);
    const auto k = randn(static_cast<size_t>(n) * d, 32 + n, 3.0);
    std::vector<float> plain(static_cast<size_t>(queries) * n), known(plain.size());
    score_rows(q.data(), queries, k.data(), n, d, 0.3f, plain.data());
    for (const int rows : {0, 16, 32, n / 16 * 16, n}) {
      if (rows > n) continue;
      KeyTiles tiles(d);
      const int whole = rows / 16 * 16;
      for (int done = 0; done < whole;) {  // grown 16 or 32 rows at a time
        const int more = std::min(whole - done, done % 32 == 0 ? 32 : 16);
        tiles.append(k.data() + static_cast<size_t>(done) * d, more);
        done += more;
      }
      if (rows == n && whole >= 16) tiles.truncate(16);  // a row before 16 left: cut back
      const KeyTiles at_once(k.data(), tiles.num_keys, d);
      ASSERT_EQ(tiles.data, at_once.data);
      std::fill(known.begin(), known.end(), -1.f);
      score_rows(q.data(), queries, k.data(), n, d, 0.3f, known.data(), &tiles);
      for (size_t i = 0; i < plain.size(); ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(plain[i]), std::bit_cast<uint32_t>(known[i]))
            << "n " << n << " known rows " << tiles.num_keys << " entry " << i;
      }
    }
  }
}

// The fused one-pass kernels equal their two-pass definitions to the bit: the softmax (the
// exponentials stored, then lane_sum()), the kept mass and KL cross terms (terms stored, then
// lane_sum()), and first_max_index() is std::max_element's first largest entry, ties included.
TEST(AttentionKernels, FusedPassesEqualTheirDefinitionsBitwise) {
  for (const size_t n : {1, 5, 16, 31, 100, 1000}) {
    auto s = randn(n, 41 + n, 4.0);
    const auto c = randn(n, 42 + n, 4.0);
    for (size_t i = 0; i + 3 < n; i += 7) s[i + 3] = s[i];  // ties
    const float mx = *std::max_element(s.begin(), s.end());
    EXPECT_EQ(first_max_index(s.data(), n),
              static_cast<size_t>(std::max_element(s.begin(), s.end()) - s.begin()));
    EXPECT_EQ(max_value(s.data(), n), mx);
    std::vector<float> want(n), got = s, terms(n), cross(n);
    for (size_t i = 0; i < n; ++i) want[i] = fast_expf(s[i] - mx);
    const float sum = lane_sum(want.data(), n);
    for (auto& w : want) w *= 1.f / sum;
    std::vector<float> out_of_place(n);
    EXPECT_EQ(softmax_into(s.data(), out_of_place.data(), n),
              mx + std::log(static_cast<double>(sum)));
    const double lse = softmax_inplace(got.data(), n);
    EXPECT_EQ(lse, mx + std::log(static_cast<double>(sum)));
    EXPECT_EQ(out_of_place, got);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i])) << i;
    }
    const float shift = mx + 0.5f;
    for (size_t i = 0; i < n; ++i) {
      terms[i] = fast_expf(s[i] - shift);
      cross[i] = terms[i] * (s[i] - c[i]);
    }
    float mass = 0, cross_sum = 0;
    exp_sum_and_cross(s.data(), c.data(), n, shift, &mass, &cross_sum);
    EXPECT_EQ(std::bit_cast<uint32_t>(mass), std::bit_cast<uint32_t>(lane_sum(terms.data(), n)));
    EXPECT_EQ(std::bit_cast<uint32_t>(cross_sum),
              std::bit_cast<uint32_t>(lane_sum(cross.data(), n)));
    EXPECT_EQ(std::bit_cast<uint32_t>(exp_sum(s.data(), n, shift)), std::bit_cast<uint32_t>(mass));
  }
  // All equal: the first; the largest last: the last.
  const std::vector<float> flat(40, 2.f);
  EXPECT_EQ(first_max_index(flat.data(), flat.size()), 0u);
  std::vector<float> rising(37);
  for (size_t i = 0; i < rising.size(); ++i) rising[i] = static_cast<float>(i);
  EXPECT_EQ(first_max_index(rising.data(), rising.size()), 36u);
}

// weighted_sum_rows (blocks of 8 queries over the rows they share, then each query's own rest)
// gives every query weighted_sum()'s output over its own rows, to the bit, for ragged lengths
// as a block of measured steps has them (n, n + 1, ...) and arbitrary ones.
TEST(AttentionKernels, RaggedWeightedSumEqualsPerQuerySumBitwise) {
  for (const auto& [queries, d, ragged] :
       {std::tuple{16, 64, false}, std::tuple{13, 64, true}, std::tuple{8, 72, true},
        std::tuple{5, 128, false}, std::tuple{20, 8, true}}) {
    const size_t stride = 300;
    const auto p = randn(static_cast<size_t>(queries) * stride, 51 + queries);
    const auto v = randn(stride * d, 52 + queries);
    std::vector<size_t> lengths(queries);
    Rng rng(53);
    for (int j = 0; j < queries; ++j) {
      lengths[j] = ragged ? 1 + static_cast<size_t>(rng.uniform() * stride)
                          : stride - 4 + static_cast<size_t>(j / 4);  // steps t, t + 1, ...
      lengths[j] = std::min(lengths[j], stride);
    }
    std::vector<float> got(static_cast<size_t>(queries) * d), want(d);
    weighted_sum_rows(p.data(), stride, queries, lengths.data(), v.data(), d, got.data());
    for (int j = 0; j < queries; ++j) {
      weighted_sum(p.data() + j * stride, 1, v.data(), lengths[j], d, want.data());
      for (int c = 0; c < d; ++c) {
        ASSERT_EQ(std::bit_cast<uint32_t>(got[j * d + c]), std::bit_cast<uint32_t>(want[c]))
            << "queries " << queries << " d " << d << " query " << j << " channel " << c;
      }
    }
  }
}

TEST(AttentionKernels, SoftmaxIsStableForLargeScores) {
  std::vector<float> s = {1000.f, 999.f, -1000.f};
  const double lse = softmax_inplace(s.data(), s.size());
  EXPECT_NEAR(lse, 1000 + std::log(1 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(s[0] + s[1] + s[2], 1.0, 1e-6);
  EXPECT_TRUE(std::isfinite(s[2]));
}

}  // namespace
}  // namespace kvsim

namespace kvsim {
namespace {
TEST(AttentionKernels, FastExpMatchesStdExp) {
  for (float x = -87.f; x <= 88.f; x += 0.01234f) {
    const double want = std::exp(static_cast<double>(x));
    EXPECT_NEAR(fast_expf(x), want, 3e-7 * want) << x;
  }
  EXPECT_EQ(fast_expf(0.f), 1.f);
  EXPECT_GT(fast_expf(-1000.f), 0.f);  // clamped, never NaN
  EXPECT_TRUE(std::isfinite(fast_expf(1000.f)));
}
}  // namespace
}  // namespace kvsim
