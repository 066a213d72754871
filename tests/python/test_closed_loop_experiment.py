"""Smoke test of experiments/07_closed_loop/run.sh at its tiny size (KVSIM_STUDY_SIZE=tiny):
SmolLM2 on 3 short prompts, 4 configs and the oracle, capture -> replay -> live -> analysis.
Needs torch and the model packages (trace/capture/install.sh) and the live mode."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("transformers")
live = pytest.importorskip("kvsim.live", reason="the live mode (kvsim.live) is not installed")


def test_run_sh_tiny(tmp_path):
    env = dict(os.environ, KVSIM_STUDY_SIZE="tiny", KVSIM_RESULTS=str(tmp_path), KVSIM_STUDY_BOOT="20",
               PYTHON=sys.executable)  # run.sh's Python: this one, which has kvsim.live
    p = subprocess.run(["bash", os.path.join(REPO, "experiments", "07_closed_loop", "run.sh")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "07_closed_loop"
    cfg = pd.read_csv(out / "per_config.csv")
    # every grid entry on both sides but the oracle, which only replay runs
    specs = set(cfg["spec"])
    assert {"full", "snapkv:ratio=0.25", "kivi:bits=2,residual=32", "oracle:ratio=0.25"} <= specs
    oracle = cfg[cfg["spec"] == "oracle:ratio=0.25"].iloc[0]
    assert pd.isna(oracle["delta_nll"]) and oracle["rel_err_mean"] > 0
    full = cfg[cfg["spec"] == "full"].iloc[0]
    assert full["delta_nll"] == pytest.approx(0.0, abs=1e-9) and full["rel_err_mean"] < 1e-6
    corr = pd.read_csv(out / "correlations.csv")
    assert {"spearman", "kendall", "cross_family_tau"} <= set(corr.columns)
    assert (out / "figures" / "scatter_delta_nll.png").stat().st_size > 1000
    assert "## Spearman, all families" in (out / "tables.md").read_text()
    # a second run skips every finished step: no capture, no replay, no live row recomputed
    again = subprocess.run(["bash", os.path.join(REPO, "experiments", "07_closed_loop", "run.sh")],
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "capturing" not in again.stderr and "replay of the grid" not in again.stderr
