"""Smoke test of experiments/07_closed_loop/run.sh at its tiny size (KVSIM_STUDY_SIZE=tiny):
SmolLM2 on 3 short prompts, 3 configs, `full` and the oracle: capture -> replay -> live ->
analysis, then a rerun that must skip every finished step.

Skipped unless KVSIM_STUDY_SMOKE=1: it loads SmolLM2 three times (capture, live, live again)
and takes about 1.5-2 min on an idle 2-core machine, over the ~1 min a CI test may take.
Needs torch and the model packages (trace/capture/install.sh) and the live mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

if os.environ.get("KVSIM_STUDY_SMOKE") != "1":
    pytest.skip("run.sh smoke run: ~1.5-2 min (three SmolLM2 loads); set KVSIM_STUDY_SMOKE=1",
                allow_module_level=True)
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("kvsim.live", reason="the live mode (kvsim.live) is not installed")

RUN_SH = os.path.join(REPO, "experiments", "07_closed_loop", "run.sh")
TIMEOUT_S = int(os.environ.get("KVSIM_STUDY_SMOKE_TIMEOUT", "600"))


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    """run.sh in its own process group, killed whole (live processes included) on timeout."""
    p = subprocess.Popen(["bash", RUN_SH], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"run.sh took over {TIMEOUT_S} s")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_run_sh_tiny(tmp_path):
    env = dict(os.environ, KVSIM_STUDY_SIZE="tiny", KVSIM_RESULTS=str(tmp_path), KVSIM_STUDY_BOOT="20",
               PYTHON=sys.executable)  # run.sh's Python: this one, which has kvsim.live
    p = _run(env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "07_closed_loop"
    cfg = pd.read_csv(out / "per_config.csv")
    # every grid entry on the replay side; the oracle has no closed-loop outcome
    specs = set(cfg["spec"])
    assert {"full", "snapkv:ratio=0.25", "kivi:bits=2,residual=32", "oracle:ratio=0.25"} <= specs
    oracle = cfg[cfg["spec"] == "oracle:ratio=0.25"].iloc[0]
    assert pd.isna(oracle["delta_nll"]) and oracle["rel_err_mean"] > 0
    full = cfg[cfg["spec"] == "full"].iloc[0]
    assert full["delta_nll"] == pytest.approx(0.0, abs=1e-9) and full["rel_err_mean"] < 1e-3
    assert cfg[cfg["spec"] == "snapkv:ratio=0.25"]["delta_nll"].notna().all()
    corr = pd.read_csv(out / "correlations.csv")
    assert {"spearman", "kendall", "cross_family_tau"} <= set(corr.columns)
    assert (out / "figures" / "scatter_delta_nll.png").stat().st_size > 1000
    assert "## Spearman, all families" in (out / "tables.md").read_text()
    # a second run skips every finished step: no capture, no replay, no live row recomputed
    again = _run(env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "capturing" not in again.stderr and "replay of the grid" not in again.stderr
