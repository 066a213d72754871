"""Smoke tests: the experiments' plots.py scripts run on synthetic results files that
carry the experiments' own policy specs, and write their figures and tables."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, write_fake_results

MODELS = ["smollm2", "gemma3-270m"]


def specs(cfg: str) -> list[str]:
    with open(os.path.join(REPO, cfg), encoding="utf-8") as f:
        return [line.split("=", 1)[1].strip() for line in f if line.startswith("policy")]


def fake(path, cfg: str) -> None:
    runs = []
    for i, spec in enumerate(specs(cfg)):
        runs.append({"spec": spec, "bits": 16.0 if spec == "full" else 1.0 + (i % 7),
                     "err": 0.0 if spec == "full" else 0.02 * (1 + i % 5)})
    n = len(runs)
    write_fake_results(path, runs, summary_override={"memory_ratio_ideal": [0.2] * n})


@pytest.mark.parametrize("exp,name,figures", [
    ("01_kivi", "{m}.h5", ["key_axis.png", "group_residual.png"]),
    ("04_skvq_vs_kivi", "{m}_policies.h5", ["skvq_vs_kivi.png", "skvq_ablations.png"]),
    ("05_mikv_h2o_l2", "{m}_policies.h5", ["equal_memory.png"]),
    ("06_combinations", "{m}_policies.h5", ["combinations.png"]),
])
def test_plots_script(tmp_path, exp, name, figures):
    res = tmp_path / "res"
    res.mkdir()
    for m in MODELS:
        fake(res / name.format(m=m), f"experiments/{exp}/policies.cfg")
    figs = tmp_path / "out" / "figures"
    figs.mkdir(parents=True)
    script = os.path.join(REPO, "experiments", exp, "plots.py")
    p = subprocess.run([sys.executable, script, str(res), str(figs)], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, MPLBACKEND="Agg"))
    assert p.returncode == 0, p.stderr[-2000:]
    for f in figures:
        assert (figs / f).stat().st_size > 5000, f
    assert any(n.endswith(".md") for n in os.listdir(tmp_path / "out"))


def test_configs_are_valid_spec_lists():
    for exp in ("01_kivi", "02_l2norm", "04_skvq_vs_kivi", "05_mikv_h2o_l2", "06_combinations"):
        s = specs(f"experiments/{exp}/policies.cfg")
        assert s and len(s) == len(set(s)), exp
    for cfg in ("gamma.cfg", "start.smollm2.cfg", "start.gemma3-270m.cfg"):
        assert specs(f"experiments/03_minicache/{cfg}")
