#!/usr/bin/env python3
"""The cost of an eviction scorer written in Python (docs/performance.md): replay time of
the same rule in Python and in C++, and next to h2o, on one trace, in one process.

    python3 sim/bench/python_scorer_bench.py [--trace PATH] [--repeat 3] [--threads 1]
                                             [--measure last=1]

Rules compared (--measure all adds the same metric work to every replay; the default,
last=1, leaves mostly each policy's own work):
  l2norm (C++)   vs l2norm_py (the same key-norm rule in Python, bit-identical records)
  tova_py        TOVA in Python (the latest query's attention, cap schedule)
  h2o (C++)      accumulated attention with a recent window, cap schedule
Prints the median wall time of each replay, the ratios, and the Python scorer's extra
time per call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import kvsim

CALLS = {"n": 0}  # Python scorer calls, counted over one replay


@kvsim.scorer("l2norm_py", params={"budget": 0.5, "schedule": "once"})
def l2norm_py(view: kvsim.ScoreView) -> np.ndarray:
    CALLS["n"] += 1
    keys = view.keys[view.candidates].astype(np.float64)
    s = np.zeros(len(keys))
    for c in range(keys.shape[1]):  # channel by channel, as the C++ rule accumulates
        s += keys[:, c] * keys[:, c]
    return -s


@kvsim.scorer("l2norm_cap_py", params={"budget": 64, "schedule": "cap"})
def l2norm_cap_py(view: kvsim.ScoreView) -> np.ndarray:
    return l2norm_py(view)


@kvsim.scorer("tova_py", params={"budget": 64}, observe="latest", prefill_rows=1,
              decode_attention=True)
def tova_py(view: kvsim.ScoreView) -> np.ndarray:
    CALLS["n"] += 1
    return view.attention[view.candidates]


PAIRS = [
    ("l2norm:skip=[]", "l2norm_py"),
    ("l2norm:skip=[],schedule=cap,cap=64", "l2norm_cap_py"),
    ("h2o:heavy_tokens=32,recent_tokens=32", "tova_py:budget=64"),
]


def time_replay(trace: kvsim.Trace, spec: str, measure: str, threads: int,
                repeat: int) -> tuple[float, int]:
    """Median wall time of `repeat` replays, and the Python scorer calls of one."""
    times = []
    for _ in range(repeat):
        CALLS["n"] = 0
        start = time.perf_counter()
        kvsim.replay(trace, [spec], measure=measure, threads=threads, progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times), CALLS["n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default=None, help="trace file (default: the embedded one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measure", default="last=1", help="measured steps (as kvsim replay)")
    args = parser.parse_args()
    trace = kvsim.open_trace(args.trace or kvsim.embedded_trace())
    print(f"{trace}; measure={args.measure}, threads={args.threads}, median of {args.repeat}")
    run = (lambda spec: time_replay(trace, spec, args.measure, args.threads, args.repeat))
    print(f"{'full':40s} {run('full')[0] * 1e3:9.1f} ms")
    for cxx, py in PAIRS:
        t_cxx, _ = run(cxx)
        t_py, calls = run(py)
        print(f"{cxx:40s} {t_cxx * 1e3:9.1f} ms")
        print(f"{py:40s} {t_py * 1e3:9.1f} ms   x{t_py / t_cxx:.2f} of the C++ rule, "
              f"{calls} calls, {(t_py - t_cxx) / max(calls, 1) * 1e6:+.1f} us per call")


if __name__ == "__main__":
    main()
