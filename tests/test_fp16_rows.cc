// The "fp16" rows of the stores (full, KIVI's residual, SKVQ's sinks and window,
// MiKV's 16-bit tokens) hold 16-bit values, the precision their memory is counted
// at: a float32 trace's values are rounded to fp16 once; a 16-bit trace's are kept.
#include <gtest/gtest.h>

#include <cmath>

#include "sim/base/fp16.h"
#include "sim/base/rng.h"
#include "test_util.h"

namespace kvsim {
namespace {

constexpr int kDim = 8, kTokens = 10;

struct Row {
  int32_t pos;
  bool key;
};

// Random float32 K/V (none an fp16 value) in a one-head shard of dtype `dtype`.
void fill(testing::HandShard& hs, StoredDType dtype) {
  hs.meta.dtype = dtype;
  Rng rng(3);
  for (auto* plane : {&hs.layer.k, &hs.layer.v}) {
    for (float& x : *plane) {
      do {
        x = static_cast<float>(rng.normal() * 3);
      } while (round_to_half(x) == x);
    }
  }
}

// Inserts the prompt through `spec`'s store and checks the rows named in `fp16`.
void check_rows(const std::string& spec, const std::vector<Row>& fp16, StoredDType dtype) {
  testing::HandShard hs(1, 1, kDim, kTokens, kTokens);
  fill(hs, dtype);
  Pipeline pipe = Pipeline::create(PolicySpec::parse(spec), hs.ctx, {});
  HeadCache cache;
  cache.head_dim = kDim;
  pipe.store->insert(0, 0, cache, testing::range(0, kTokens), hs.layer, /*prefill=*/true);
  for (const Row& r : fp16) {
    const int64_t row = cache.find(r.pos);
    ASSERT_GE(row, 0) << spec;
    const float* got = r.key ? cache.key_row(row) : cache.value_row(row);
    const float* raw = r.key ? hs.layer.key(0, r.pos) : hs.layer.value(0, r.pos);
    for (int c = 0; c < kDim; ++c) {
      const float want = dtype == StoredDType::kFloat32 ? round_to_half(raw[c]) : raw[c];
      EXPECT_EQ(got[c], want) << spec << " token " << r.pos << (r.key ? " key" : " value");
    }
  }
}

std::vector<Row> all_rows(int32_t lo, int32_t hi, bool keys, bool values) {
  std::vector<Row> out;
  for (int32_t p = lo; p < hi; ++p) {
    if (keys) out.push_back({p, true});
    if (values) out.push_back({p, false});
  }
  return out;
}

TEST(Fp16Rows, Float32TracesAreRoundedAndSixteenBitTracesKept) {
  // KIVI, R = 8 over a 10-token prompt: keys 8, 9 and values 2..9 stay in the residual.
  std::vector<Row> kivi = all_rows(8, 10, true, false);
  for (const Row& r : all_rows(2, 10, false, true)) kivi.push_back(r);
  // SKVQ: the sink (token 0) and the window (tokens 6..9).
  std::vector<Row> skvq = all_rows(0, 1, true, true);
  for (const Row& r : all_rows(6, 10, true, true)) skvq.push_back(r);
  for (const StoredDType dtype : {StoredDType::kFloat32, StoredDType::kFloat16}) {
    check_rows("full", all_rows(0, kTokens, true, true), dtype);
    check_rows("kivi:bits=2,group=4,residual=8", kivi, dtype);
    check_rows("skvq:group=4,sinks=1,window=4,reorder=false", skvq, dtype);
    // MiKV at hi_bits=16: the recent 20% (tokens 8, 9) are important without attention.
    check_rows("mikv:heavy=0,recent=0.2,lo_bits=2,balance=false,importance=l2norm",
               all_rows(8, 10, true, true), dtype);
  }
}

TEST(Fp16Rows, Float32ValuesBeyondFp16AreRefused) {
  testing::HandShard hs(1, 1, kDim, kTokens, kTokens);
  fill(hs, StoredDType::kFloat32);
  hs.layer.v[3] = 1e5f;
  Pipeline pipe = Pipeline::create(PolicySpec::parse("full"), hs.ctx, {});
  HeadCache cache;
  cache.head_dim = kDim;
  try {
    pipe.store->insert(0, 0, cache, testing::range(0, kTokens), hs.layer, true);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("beyond fp16's range"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvsim
