// Test-only `kvsim sweep` that dies mid-sweep, for the kill -9 / --resume test
// (sweep_mpi_test.sh resume): the same driver as `kvsim sweep`, with a hook
// that SIGKILLs rank KVSIM_SWEEP_TEST_KILL_RANK (default 0) right after it
// checkpoints its KVSIM_SWEEP_TEST_KILL_AFTER-th unit. Without
// KVSIM_SWEEP_TEST_KILL_AFTER it behaves exactly like `kvsim sweep`.
//
//   sweep_kill SWEEP.yaml --out results.h5 [kvsim sweep options]
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include "sim/sweep.h"

int main(int argc, char** argv) {
  kvsim::SweepHooks hooks;
  if (const char* after = std::getenv("KVSIM_SWEEP_TEST_KILL_AFTER")) {
    const char* rank = std::getenv("KVSIM_SWEEP_TEST_KILL_RANK");
    const int kill_rank = rank ? std::atoi(rank) : 0;
    const int64_t kill_after = std::atoll(after);
    hooks.unit_checkpointed = [=](int my_rank, int64_t done) {
      if (my_rank == kill_rank && done == kill_after) ::kill(::getpid(), SIGKILL);
    };
  }
  return kvsim::run_sweep_command(argc, argv, "sweep_kill (test)", hooks);
}
