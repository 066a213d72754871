#!/usr/bin/env python3
"""kvsim's replay next to the vectorised NumPy replay (sim/bench/numpy_replay.py), side by side.

    python3 sim/bench/compare_numpy.py --kvsim build/sim/kvsim [--repeat 5] [--threads 1]

For every trace (the embedded SmolLM2 trace and a 4096-token synthetic trace made with
``kvsim synth``, unless --trace is given) and every policy (full, kivi:bits=2, snapkv, h2o):

1. agreement first: both replays' rel_err of every (sequence, layer, query head, step) record
   must agree to --tolerance (1e-4), or the script stops with exit status 1;
2. timing: whole processes (start-up, trace reading and checking, replay, output), kvsim and
   NumPy interleaved and alternating which goes first, --repeat times; both limited to
   --threads threads (kvsim --threads, OPENBLAS/OMP/MKL_NUM_THREADS for NumPy's BLAS). The
   row "(read + check)" times reading every value of the trace and checking it alone:
   ``kvsim inspect --check`` against h5py reading, converting and checking the same arrays.

Prints one Markdown table (min and median seconds of each, and the ratio of the medians,
NumPy / kvsim: above 1 means kvsim is faster). Figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
POLICIES = ("full", "kivi:bits=2", "snapkv", "h2o")


# The NumPy side of the trace-reading comparison: numpy_replay.read_trace (h5py reads each
# dataset whole, converts it to float32 and checks it is finite).
READ_AND_CHECK = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import numpy_replay; "
                  "numpy_replay.read_trace(sys.argv[1])")


def kvsim_command(kvsim: str, trace: str, policy: str, out: str, threads: int) -> list[str]:
    """The kvsim replay of one policy over one trace, quietly, on `threads` threads."""
    return [kvsim, "replay", "--trace", trace, "--policy", policy, "--out", out, "-q",
            "--threads", str(threads)]


def numpy_command(trace: str, policy: str, out: str) -> list[str]:
    """The NumPy replay of one policy over one trace."""
    return [sys.executable, str(HERE / "numpy_replay.py"), trace, policy, "--out", out]


def numpy_env(threads: int) -> dict[str, str]:
    """The environment that limits NumPy's BLAS to `threads` threads."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    return env


def record_keys(sequence, layer, q_head, step) -> np.ndarray:
    """One int64 per record, to match the two replays' records."""
    return ((np.asarray(sequence, np.int64) * 1024 + layer) * 4096 + q_head) * (1 << 24) + step


def max_rel_err_difference(kvsim_out: str, numpy_out: str) -> tuple[int, float]:
    """The number of records and the largest |rel_err difference| between the two replays."""
    theirs = np.load(numpy_out)["records"]
    with h5py.File(kvsim_out, "r") as f:
        steps = f["runs/0000/steps"]
        ours = {c: steps[c][...] for c in ("sequence", "layer", "q_head", "step", "rel_err")}
    a = record_keys(ours["sequence"], ours["layer"], ours["q_head"], ours["step"])
    b = record_keys(theirs["sequence"], theirs["layer"], theirs["q_head"], theirs["step"])
    ia, ib = np.argsort(a), np.argsort(b)
    if len(a) != len(b) or not np.array_equal(a[ia], b[ib]):
        sys.exit(f"compare_numpy: the replays measured different records ({len(a)} vs {len(b)})")
    return len(a), float(np.max(np.abs(ours["rel_err"][ia] - theirs["rel_err"][ib])))


def run(command: list[str], env: dict[str, str] | None = None) -> float:
    """Runs a command to completion; returns its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kvsim", default=str(REPO / "build/sim/kvsim"))
    parser.add_argument("--trace", action="append", help="trace(s) to replay (default: two)")
    parser.add_argument("--policy", action="append", choices=POLICIES)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    policies = args.policy or list(POLICIES)

    with tempfile.TemporaryDirectory(prefix="kvsim_compare_") as work:
        traces = args.trace
        if not traces:
            synthetic = os.path.join(work, "synth4096.h5")
            subprocess.run([args.kvsim, "synth", "-o", synthetic, "--tokens", "4096",
                            "--prompt-len", "4000"], check=True, stdout=subprocess.DEVNULL)
            traces = [str(REPO / "trace/data/smollm2_default.h5"), synthetic]
        ours, theirs = os.path.join(work, "kvsim.h5"), os.path.join(work, "numpy.npz")
        env = numpy_env(args.threads)

        print("agreement (rel_err of every record):")
        for trace in traces:
            for policy in policies:
                subprocess.run(kvsim_command(args.kvsim, trace, policy, ours, args.threads),
                               check=True)
                subprocess.run(numpy_command(trace, policy, theirs), check=True, env=env,
                               stdout=subprocess.DEVNULL)
                count, worst = max_rel_err_difference(ours, theirs)
                print(f"  {Path(trace).name} {policy}: {count} records, max |diff| {worst:.2e}")
                if not worst <= args.tolerance:
                    sys.exit(f"compare_numpy: rel_err differs by {worst} > {args.tolerance}")

        times: dict[tuple[str, str, str], list[float]] = {}
        for r in range(args.repeat):
            for trace in traces:
                # Reading and checking every value: kvsim inspect --check, h5py + NumPy.
                pair = [("kvsim", [args.kvsim, "inspect", trace, "--check"], None),
                        ("numpy", [sys.executable, "-c", READ_AND_CHECK, trace], env)]
                for name, command, environment in pair if r % 2 == 0 else pair[::-1]:
                    times.setdefault((trace, "(read + check)", name), []).append(
                        run(command, environment))
                for policy in policies:
                    pair = [("kvsim", kvsim_command(args.kvsim, trace, policy, ours, args.threads),
                             None), ("numpy", numpy_command(trace, policy, theirs), env)]
                    for name, command, environment in pair if r % 2 == 0 else pair[::-1]:
                        times.setdefault((trace, policy, name), []).append(
                            run(command, environment))

    print(f"\n{args.repeat} interleaved runs, {args.threads} thread(s), whole processes:\n")
    print("| trace | policy | kvsim min / median (s) | NumPy min / median (s) | NumPy / kvsim |")
    print("|---|---|---|---|---|")
    for trace in traces:
        for policy in ["(read + check)"] + policies:
            k, n = times[(trace, policy, "kvsim")], times[(trace, policy, "numpy")]
            label = policy if policy.startswith("(") else f"`{policy}`"
            print(f"| {Path(trace).name} | {label} | {min(k):.3f} / {statistics.median(k):.3f} "
                  f"| {min(n):.3f} / {statistics.median(n):.3f} "
                  f"| {statistics.median(n) / statistics.median(k):.2f} |")


if __name__ == "__main__":
    main()
