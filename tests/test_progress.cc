// The progress bar's redraw throttle, on an injected clock (sim/progress.h).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "sim/progress.h"

namespace kvsim {
namespace {

// A clock the test moves by hand.
struct FakeClock {
  ProgressBar::Clock::time_point now{};
  void advance(std::chrono::milliseconds ms) { now += ms; }
};

std::string read_all(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string text;
  for (int c; (c = std::fgetc(f)) != EOF;) text.push_back(static_cast<char>(c));
  return text;
}

const auto kInterval = std::chrono::milliseconds(1000 / ProgressBar::kMaxRedrawsPerSecond);

TEST(ProgressBar, RedrawsAtMostAFewTimesPerSecond) {
  FakeClock clock;
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  ProgressBar bar(
      "work", true, [&] { return clock.now; }, out);
  bar.update(0, 1000);  // the first update draws
  EXPECT_EQ(bar.redraws(), 1);
  for (size_t done = 1; done < 500; ++done) bar.update(done, 1000);  // no time passes
  EXPECT_EQ(bar.redraws(), 1);
  clock.advance(kInterval - std::chrono::milliseconds(1));
  bar.update(600, 1000);
  EXPECT_EQ(bar.redraws(), 1);
  clock.advance(std::chrono::milliseconds(1));  // a full interval since the last redraw
  bar.update(601, 1000);
  EXPECT_EQ(bar.redraws(), 2);
  // A simulated second of updates every millisecond: at most kMaxRedrawsPerSecond redraws.
  for (int ms = 0; ms < 1000; ++ms) {
    clock.advance(std::chrono::milliseconds(1));
    bar.update(602 + static_cast<size_t>(ms) / 10, 1000);
  }
  EXPECT_EQ(bar.redraws(), 2 + ProgressBar::kMaxRedrawsPerSecond);
  // Reaching the total always draws, once.
  bar.update(1000, 1000);
  bar.update(1000, 1000);
  EXPECT_EQ(bar.redraws(), 3 + ProgressBar::kMaxRedrawsPerSecond);
  bar.finish();
  const std::string text = read_all(out);
  std::fclose(out);
  size_t carriage_returns = 0;
  for (char c : text) carriage_returns += c == '\r';
  EXPECT_EQ(carriage_returns, static_cast<size_t>(bar.redraws()));
  EXPECT_NE(text.find("1000/1000"), std::string::npos);
  EXPECT_EQ(text.back(), '\n');
}

TEST(ProgressBar, DisabledDrawsNothing) {
  FakeClock clock;
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  ProgressBar bar(
      "work", false, [&] { return clock.now; }, out);
  for (size_t done = 0; done <= 10; ++done) {
    clock.advance(kInterval);
    bar.update(done, 10);
  }
  bar.finish();
  EXPECT_EQ(bar.redraws(), 0);
  EXPECT_EQ(read_all(out), "");
  std::fclose(out);
}

TEST(ProgressBar, MpirunSignalNeedsOpenMpi) {
  // Outside mpirun (no OMPI_COMM_WORLD_SIZE), the mpirun route never claims a terminal.
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) GTEST_SKIP() << "running under mpirun";
  EXPECT_FALSE(stderr_reaches_terminal_through_mpirun());
}

}  // namespace
}  // namespace kvsim
