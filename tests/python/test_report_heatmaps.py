"""Tests for the per-head / memory / attention-mass parts of analysis/kvsim_report.py."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from conftest import TYPICAL_RUNS, write_fake_results  # noqa: E402
from test_report import check_png  # noqa: E402

import kvsim_report as kr  # noqa: E402

NEW_PNGS = ["memory_per_layer.png", "per_head_error.png", "per_head_memory.png",
            "mass_lost.png"]


def test_new_figures_and_layer_table(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS)
    out = tmp_path / "rep"
    paths = kr.write_report(path, out)
    for name in NEW_PNGS:
        assert paths[name] == os.path.join(out, name)
        check_png(paths[name])
    index = (out / "index.md").read_text(encoding="utf-8")
    for name in NEW_PNGS + ["per_layer.csv"]:
        assert f"({name})" in index

    # per_layer.csv matches the results' tables exactly.
    res = kr.load_results(path)
    layers = pd.read_csv(out / "per_layer.csv")
    assert len(layers) == sum(r["kv"]["layer"].nunique() for r in res.runs.values())
    for _, row in layers.iterrows():
        run = res.runs[int(row["run"])]
        st = run["steps"][run["steps"]["layer"] == row["layer"]]
        kv = run["kv"][run["kv"]["layer"] == row["layer"]]
        assert np.isclose(row["rel_err_mean"], st["rel_err"].astype(float).mean(), rtol=1e-6,
                          atol=1e-12)
        assert np.isclose(row["mass_lost_mean"],
                          1 - st["mass_retained"].astype(float).mean(), rtol=1e-6, atol=1e-9)
        bits = 16 * (kv["data_bits"].sum() + kv["meta_bits"].sum()) / kv["fp16_bits"].sum()
        assert np.isclose(row["bits_per_element"], bits, rtol=1e-12)


def test_memory_and_error_by_head_match_tables(typical_file):
    path, summary = typical_file
    res = kr.load_results(path)
    for r, run in res.runs.items():
        m = kr.memory_by_head(run)
        kv = run["kv"]
        for layer in m.index:
            for head in m.columns:
                cell = kv[(kv["layer"] == layer) & (kv["kv_head"] == head)]
                want = 16 * (cell["data_bits"].sum() + cell["meta_bits"].sum()) \
                    / cell["fp16_bits"].sum()
                assert np.isclose(m.loc[layer, head], want)
        # Whole-run bits per element from kv == the summary's.
        total = 16 * (kv["data_bits"].sum() + kv["meta_bits"].sum()) / kv["fp16_bits"].sum()
        srow = summary[summary["run"] == r].iloc[0]
        assert np.isclose(total, srow["bits_per_element"])
        e = kr.error_by_head(run)
        st = run["steps"]
        direct = st.assign(rel_err=st["rel_err"].astype(float)).groupby(
            ["layer", "q_head"])["rel_err"].mean().unstack()
        assert e.shape == direct.shape
        assert np.allclose(e.to_numpy(), direct.to_numpy(), rtol=1e-5)
        # Without aggregates, the same numbers from the steps table.
        e2 = kr.error_by_head({"steps": st, "aggregates": pd.DataFrame()})
        assert np.allclose(e2.to_numpy(), direct.to_numpy(), rtol=1e-6)


def test_mass_lost_by_step_and_lossy_runs(typical_file):
    path, summary = typical_file
    res = kr.load_results(path)
    table = kr.summary_table(res)
    lossy = kr.lossy_mass_runs(table)
    expected = [int(r) for r, m in zip(table["run"], table["mass_retained_mean"]) if m < 1 - 1e-6]
    assert lossy == expected and 0 not in lossy  # "full" keeps all the mass
    st = res.runs[lossy[0]]["steps"]
    s = kr.mass_lost_by_step(st)
    want = 1 - st["mass_retained"].astype(float).groupby(st["step"]).mean()
    assert np.allclose(s.to_numpy(), want.to_numpy())


def test_mass_lost_placeholder_without_eviction(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, [{"spec": "full", "bits": 16.0, "err": 0.0}])
    paths = kr.write_report(path, tmp_path / "rep")
    assert os.path.getsize(paths["mass_lost.png"]) > 1000
    index = (tmp_path / "rep" / "index.md").read_text(encoding="utf-8")
    assert "No run loses attention mass" in index


def test_many_runs_per_head_capped(tmp_path):
    path = tmp_path / "r.h5"
    runs = [{"spec": f"quant(bits={b})", "bits": b + 0.5, "err": 0.3 / b, "n_layers": 6}
            for b in range(1, 16)]
    write_fake_results(path, runs)
    paths = kr.write_report(path, tmp_path / "rep")
    check_png(paths["per_head_error.png"])
    index = (tmp_path / "rep" / "index.md").read_text(encoding="utf-8")
    assert f"first {kr.MAX_HEAD_PANELS} of 15" in index


def test_mass_lost_by_decode_step_aligns_sequences(tmp_path):
    import h5py
    path = tmp_path / "r.h5"
    write_fake_results(path, [{"spec": "evict(keep=0.5)", "bits": 8.0, "err": 0.1}])
    with h5py.File(path, "a") as f:
        g = f.create_group("sequences")
        g["sequence"] = np.array([0, 1], np.int32)
        g["prompt_len"] = np.array([8, 10], np.int32)
        g["num_tokens"] = np.array([14, 14], np.int32)
    res = kr.load_results(path)
    assert list(res.sequences["prompt_len"]) == [8, 10]
    st = res.runs[0]["steps"]
    s = kr.mass_lost_by_step(st, {0: 8, 1: 10})
    shifted = st["step"] - st["sequence"].map({0: 8, 1: 10})
    want = 1 - st["mass_retained"].astype(float).groupby(shifted).mean()
    assert list(s.index) == list(want.index) and np.allclose(s, want)
    assert min(s.index) == 8 - 10  # sequence 1's step 8 is 2 before its prompt end
    paths = kr.write_report(path, tmp_path / "rep")
    check_png(paths["mass_lost.png"])
    assert kr.load_results(tmp_path / "r.h5").sequences.shape[0] == 2
