"""The NumPy yardstick of the replay benchmarks (sim/bench/numpy_replay.py) agrees with kvsim.

compare_numpy.py times kvsim against that NumPy replay; the ratio means something only when
both do the same work, so this runs its agreement step on the embedded trace (every policy,
every record's rel_err to 1e-4) and checks that the check can fail: a NumPy KIVI with a
different residual length (64 instead of 128) must be refused.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KVSIM = os.environ.get("KVSIM_BIN", os.path.join(REPO, "build", "sim", "kvsim"))
EMBEDDED = os.path.join(REPO, "trace", "data", "smollm2_default.h5")
BENCH = os.path.join(REPO, "sim", "bench")

pytestmark = pytest.mark.skipif(not os.path.exists(KVSIM), reason="kvsim is not built")


def test_numpy_replay_agrees_with_kvsim() -> None:
    done = subprocess.run([sys.executable, os.path.join(BENCH, "compare_numpy.py"), "--kvsim",
                           KVSIM, "--trace", EMBEDDED, "--repeat", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for policy in ("full", "kivi:bits=2", "snapkv", "h2o"):
        assert f"smollm2_default.h5 {policy}: 8640 records" in done.stdout
    assert "| smollm2_default.h5 | `h2o` |" in done.stdout


def test_a_different_replay_is_refused(tmp_path) -> None:
    """The agreement check fails when the NumPy side replays another policy variant."""
    sys.path.insert(0, BENCH)
    try:
        import compare_numpy
        import numpy_replay
    finally:
        sys.path.remove(BENCH)
    ours, theirs = str(tmp_path / "kvsim.h5"), str(tmp_path / "numpy.npz")
    subprocess.run(compare_numpy.kvsim_command(KVSIM, EMBEDDED, "kivi:bits=2", ours, 1),
                   check=True, timeout=60)
    original = numpy_replay.KIVI_RESIDUAL
    numpy_replay.KIVI_RESIDUAL = 64
    try:
        records, _ = numpy_replay.replay(EMBEDDED, "kivi:bits=2")
    finally:
        numpy_replay.KIVI_RESIDUAL = original
    np.savez(theirs, records=records)
    _, worst = compare_numpy.max_rel_err_difference(ours, theirs)
    assert worst > 1e-3
