// gpu/reduce.h: the argument checks and the unavailable-backend path (always run), and a
// single-rank reduction when NCCL and a GPU are both present (skipped otherwise).
#include "gpu/reduce.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "gpu/device.h"
#include "sim/base/errors.h"

namespace kvsim::gpu {
namespace {

TEST(Reduce, CompiledFlagMatchesTheBuild) {
#if defined(KVSIM_HAVE_NCCL)
  EXPECT_TRUE(nccl_compiled());
#else
  EXPECT_FALSE(nccl_compiled());
#endif
}

// Bad arguments are ConfigError in every build, before any backend is touched.
TEST(Reduce, RejectsBadArguments) {
  const NcclUniqueId id;
  EXPECT_THROW(MetricReducer(id, -1, 2, 0), ConfigError);
  EXPECT_THROW(MetricReducer(id, 2, 2, 0), ConfigError);
  EXPECT_THROW(MetricReducer(id, 0, 0, 0), ConfigError);
  EXPECT_THROW(MetricReducer(id, 0, 1, -1), ConfigError);
}

TEST(Reduce, ThrowsBackendUnavailableWithoutNcclOrDevice) {
  if (nccl_compiled() && cuda_device_available()) GTEST_SKIP() << "NCCL and a GPU are present";
  EXPECT_THROW(nccl_unique_id(), BackendUnavailable);
  try {
    MetricReducer reducer(NcclUniqueId{}, 0, 1, 0);
    FAIL() << "MetricReducer was constructed without a backend";
  } catch (const BackendUnavailable& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(nccl_compiled() ? "GPU" : "NCCL"), std::string::npos) << msg;
  }
}

// One rank: the sum over ranks is the input itself, bit for bit.
TEST(Reduce, SingleRankSumIsTheIdentity) {
  if (!nccl_compiled() || !cuda_device_available()) {
    GTEST_SKIP() << "needs NCCL and a CUDA device: nccl_compiled=" << nccl_compiled()
                 << ", device: " << device_description();
  }
  MetricReducer reducer(nccl_unique_id(), 0, 1, 0);
  EXPECT_EQ(reducer.rank(), 0);
  EXPECT_EQ(reducer.world_size(), 1);
  std::vector<double> values = {1.5, -2.0, 1e300, 3.25e-300, 12345678.875};
  const std::vector<double> expected = values;
  reducer.sum(values);
  EXPECT_EQ(values, expected);
  std::vector<double> big(100000);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = 0.5 * static_cast<double>(i) - 7.0;
  const std::vector<double> big_expected = big;
  reducer.sum(big);  // grows the device buffer
  EXPECT_EQ(big, big_expected);
  std::vector<double> empty;
  EXPECT_NO_THROW(reducer.sum(empty));
}

}  // namespace
}  // namespace kvsim::gpu
