"""Tests for analysis/kvsim_report.py on synthetic results files (docs/results-format.md)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from conftest import REPO, TYPICAL_RUNS, write_fake_results  # noqa: E402

import kvsim_report as kr  # noqa: E402

SCRIPT = os.path.join(REPO, "analysis", "kvsim_report.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = ["summary.csv", "summary.md", "pareto.png", "error_vs_step.png",
                "per_layer.png", "memory_per_layer.png", "per_head_error.png",
                "per_head_memory.png", "mass_lost.png", "per_layer.csv", "index.md"]
PNGS = ["pareto.png", "error_vs_step.png", "per_layer.png", "memory_per_layer.png",
        "per_head_error.png", "per_head_memory.png", "mass_lost.png"]
LONG_SPEC = ("evict(keep=0.25,sink=4,recent=128,score=h2o,window=256)+"
             "quant(bits=3,group=64,axis=channel,rotate=hadamard,outliers=0.01)")


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def check_png(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_MAGIC, f"{path} is not a PNG"
    assert os.path.getsize(path) > 2000
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    h, w = image.shape[:2]
    assert 150 <= h <= 4000 and 300 <= w <= 4000, image.shape
    # Not a blank image: more than a handful of distinct colours.
    assert len(np.unique(image.reshape(-1, image.shape[2])[::7], axis=0)) > 5
    return h, w


def check_report(out_dir) -> None:
    for name in REPORT_FILES:
        path = os.path.join(out_dir, name)
        assert os.path.isfile(path), name
        assert os.path.getsize(path) > 0, name
    for name in PNGS:
        check_png(os.path.join(out_dir, name))
    leftovers = [n for n in os.listdir(out_dir) if ".tmp." in n]
    assert leftovers == [], leftovers
    with open(os.path.join(out_dir, "index.md"), encoding="utf-8") as f:
        index = f.read()
    for name in REPORT_FILES[:-1]:
        assert f"({name})" in index, name


def read_csv_exact(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_csv_matches(csv_path, summary: pd.DataFrame) -> None:
    """Every /summary number appears unchanged in summary.csv, rows by memory ratio."""
    rows = read_csv_exact(csv_path)
    expected = summary.sort_values(["memory_ratio", "run"], kind="mergesort")
    assert len(rows) == len(expected)
    assert [int(r["run"]) for r in rows] == [int(v) for v in expected["run"]]
    ratios = [float(r["memory_ratio"]) for r in rows]
    assert ratios == sorted(ratios)
    for row, (_, want) in zip(rows, expected.iterrows()):
        assert row["spec"] == want["spec"]
        assert row["resolved"] == want["resolved"]
        for col in kr.SUMMARY_COLUMNS:
            if col in ("run", "spec", "resolved"):
                continue
            got = float(row[col])
            w = float(want[col])
            assert got == w or (math.isnan(got) and math.isnan(w)), (col, got, w)


# --------------------------------------------------------------------------- loading


def test_load_results_reads_everything(typical_file):
    path, summary = typical_file
    res = kr.load_results(path)
    assert res.attrs["format"] == "kvsim-results"
    assert res.attrs["version"] == 1 and isinstance(res.attrs["version"], int)
    assert res["model_name"] == "tiny-test-model"
    assert res.attrs["num_runs"] == len(TYPICAL_RUNS)
    assert list(res.summary.columns[:len(kr.SUMMARY_COLUMNS)]) == kr.SUMMARY_COLUMNS
    assert res.summary["spec"].tolist() == [r["spec"] for r in TYPICAL_RUNS]
    assert all(type(v) is str for v in res.summary["spec"])
    assert all(type(v) is str for v in res.summary["resolved"])
    np.testing.assert_array_equal(res.summary["rel_err_mean"].to_numpy(),
                                  summary["rel_err_mean"].to_numpy())
    assert sorted(res.runs) == list(range(len(TYPICAL_RUNS)))
    run = res.runs[2]
    assert set(run) == {"steps", "kv", "aggregates"}
    assert list(run["steps"].columns) == kr.STEPS_COLUMNS
    assert list(run["kv"].columns) == kr.KV_COLUMNS
    assert list(run["aggregates"].columns) == kr.AGGREGATES_COLUMNS
    assert run["steps"]["rel_err"].dtype == np.float32
    assert run["kv"]["data_bits"].dtype == np.int64
    assert all(type(v) is str for v in run["aggregates"]["metric"])
    assert set(run["aggregates"]["scope"]) == {"overall", "layer", "head"}
    assert res.run_attrs[2]["spec"] == TYPICAL_RUNS[2]["spec"]


@pytest.mark.parametrize("fmt, version, match", [
    ("kvsim-trace", 1, "format"),
    ("", 1, "format"),
    (None, 1, "format"),
    ("kvsim-results", 2, "version"),
    ("kvsim-results", 0, "version"),
    ("kvsim-results", "1", "version"),
    ("kvsim-results", None, "version"),
])
def test_wrong_format_or_version_raises(tmp_path, fmt, version, match):
    path = tmp_path / "bad.h5"
    write_fake_results(path, TYPICAL_RUNS[:2], format=fmt, version=version)
    with pytest.raises(ValueError, match=match):
        kr.load_results(path)


def test_not_hdf5_raises_value_error(tmp_path):
    path = tmp_path / "results.h5"
    path.write_text("this is not HDF5\n")
    with pytest.raises(ValueError, match="HDF5"):
        kr.load_results(path)


def test_missing_summary_column_raises(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:2])
    with h5py.File(path, "a") as f:
        del f["summary/bits_per_element"]
    with pytest.raises(ValueError, match="bits_per_element"):
        kr.load_results(path)


def test_unequal_column_lengths_raise(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:2])
    with h5py.File(path, "a") as f:
        del f["summary/seconds"]
        f["summary"].create_dataset("seconds", data=np.zeros(5))
    with pytest.raises(ValueError, match="different lengths"):
        kr.load_results(path)


def _rewrite_summary(path, track_order: bool, order: list[str],
                     columns_attr: object | None = None) -> None:
    """Replace /summary by a copy whose datasets are created in `order`."""
    with h5py.File(path, "a") as f:
        data = {name: f["summary"][name][()] for name in f["summary"]}
        dtypes = {name: f["summary"][name].dtype for name in f["summary"]}
        del f["summary"]
        g = f.create_group("summary", track_order=track_order)
        for name in order:
            g.create_dataset(name, data=data[name], dtype=dtypes[name])
        if columns_attr is not None:
            g.attrs["columns"] = columns_attr


def test_columns_come_in_stored_creation_order(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:2])
    order = list(reversed(kr.SUMMARY_COLUMNS))
    _rewrite_summary(path, True, order)
    assert list(kr.load_results(path).summary.columns) == order


def test_columns_without_creation_order_come_by_name(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:2])
    _rewrite_summary(path, False, list(kr.SUMMARY_COLUMNS))
    assert list(kr.load_results(path).summary.columns) == sorted(kr.SUMMARY_COLUMNS)


def test_columns_attribute_sets_the_order(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:2])
    # Stored by name; the attribute (bytes, as some writers store it) lists a few
    # columns first; the rest follow in stored order.
    listed = ["seconds", "spec", "run", "memory_ratio"]
    _rewrite_summary(path, False, sorted(kr.SUMMARY_COLUMNS),
                     np.array([c.encode() for c in listed], dtype="S"))
    res = kr.load_results(path)
    rest = [c for c in sorted(kr.SUMMARY_COLUMNS) if c not in listed]
    assert list(res.summary.columns) == listed + rest
    assert res.summary["spec"].tolist() == [r["spec"] for r in TYPICAL_RUNS[:2]]
    # A run table with the attribute as variable-length str.
    with h5py.File(path, "a") as f:
        f["runs/0001/kv"].attrs["columns"] = list(reversed(kr.KV_COLUMNS))
    res = kr.load_results(path)
    assert list(res.runs[1]["kv"].columns) == list(reversed(kr.KV_COLUMNS))
    assert list(res.runs[0]["kv"].columns) == kr.KV_COLUMNS


def test_columns_attribute_naming_a_missing_column_raises(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:2])
    with h5py.File(path, "a") as f:
        f["summary"].attrs["columns"] = ["run", "no_such_column"]
    with pytest.raises(ValueError, match="no_such_column"):
        kr.load_results(path)


def test_fixed_length_byte_strings_decode_to_str(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:2])
    with h5py.File(path, "a") as f:
        specs = [s.encode() for s in f["summary/spec"].asstr()[()]]
        del f["summary/spec"]
        f["summary"].create_dataset("spec", data=np.array(specs, dtype="S"))
        f.attrs["note"] = np.bytes_(b"bytes attribute")
    res = kr.load_results(path)
    assert res.summary["spec"].tolist() == [r["spec"] for r in TYPICAL_RUNS[:2]]
    assert all(type(v) is str for v in res.summary["spec"])
    assert res.attrs["note"] == "bytes attribute"


def test_summary_table_keeps_report_column_order_whatever_the_file_order(tmp_path):
    # The report's CSV columns do not depend on how the file orders /summary.
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_fake_results(a, TYPICAL_RUNS)
    write_fake_results(b, TYPICAL_RUNS, summary_override={"extra": [1.0] * len(TYPICAL_RUNS)})
    _rewrite_summary(b, True, list(reversed(kr.SUMMARY_COLUMNS)) + ["extra"])
    ta = kr.summary_table(kr.load_results(a))
    tb = kr.summary_table(kr.load_results(b))
    assert list(tb.columns) == list(ta.columns) + ["extra"]
    assert list(ta.columns[:len(kr.REPORT_COLUMNS)]) == [c for c, _ in kr.REPORT_COLUMNS]


def test_counters_are_loaded(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:2])
    with h5py.File(path, "a") as f:
        g = f["runs/0001"].create_group("counters")
        g.create_dataset("name", data=np.array(["h2o.evicted_tokens"], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        g.create_dataset("value", data=np.array([12.0]))
    res = kr.load_results(path)
    assert res.counters == {0: {}, 1: {"h2o.evicted_tokens": 12.0}}


# --------------------------------------------------------------------------- pareto


def test_pareto_frontier_hand_made():
    df = pd.DataFrame({
        "spec": ["a", "b", "c", "d", "e", "f", "g", "h", "i"],
        "bits_per_element": [16.0, 8.0, 8.0, 4.0, 4.5, 2.0, 3.0, 5.0, np.nan],
        "rel_err_mean":     [0.0, 0.01, 0.02, 0.05, 0.05, 0.3, 0.4, 0.01, 0.001],
    }, index=[10, 11, 12, 13, 14, 15, 16, 17, 18])
    front = kr.pareto_frontier(df)
    # g is beaten by f, e by d (same error, more bits), b and c by h (h: 5 bits, same or
    # lower error), i has no bits value; f, d, h, a remain.
    assert front["spec"].tolist() == ["f", "d", "h", "a"]
    assert front.index.tolist() == [15, 13, 17, 10]
    # Sorted by bits, error strictly falling.
    assert front["bits_per_element"].is_monotonic_increasing
    assert (np.diff(front["rel_err_mean"].to_numpy()) < 0).all()


def test_pareto_frontier_keeps_exact_duplicates_and_handles_edges():
    df = pd.DataFrame({"bits_per_element": [4.0, 4.0, 8.0, 8.0],
                       "rel_err_mean": [0.1, 0.1, 0.0, 0.0]})
    assert kr.pareto_frontier(df).index.tolist() == [0, 1, 2, 3]
    one = pd.DataFrame({"bits_per_element": [3.0], "rel_err_mean": [0.2]})
    assert kr.pareto_frontier(one).index.tolist() == [0]
    empty = one.iloc[:0]
    assert kr.pareto_frontier(empty).empty
    custom = pd.DataFrame({"m": [1.0, 2.0, 3.0], "e": [3.0, 1.0, 2.0]})
    assert kr.pareto_frontier(custom, x="m", y="e").index.tolist() == [0, 1]


def test_pareto_frontier_of_typical_file(typical_file):
    path, _ = typical_file
    front = kr.pareto_frontier(kr.load_results(path).summary)
    # evict(keep=0.5) at 8 bits is beaten by quant(bits=4) (fewer bits, lower error).
    assert "evict(keep=0.5)" not in set(front["spec"])
    assert front["spec"].iloc[-1] == "full"


# --------------------------------------------------------------------------- tables


def test_summary_table_sorted_and_unchanged(typical_file):
    path, summary = typical_file
    table = kr.summary_table(kr.load_results(path))
    assert table["memory_ratio"].is_monotonic_increasing
    assert [c for c, _ in kr.REPORT_COLUMNS] == list(table.columns[:len(kr.REPORT_COLUMNS)])
    expected = summary.sort_values("memory_ratio", kind="mergesort").reset_index(drop=True)
    for col in ("rel_err_mean", "bits_per_element", "kl_mean"):
        assert table[col].tolist() == expected[col].tolist()


def test_markdown_formatting():
    assert kr.format_number(0.000123456) == "0.0001235"
    assert kr.format_number(16.0) == "16"
    assert kr.format_number(0.0) == "0"
    assert kr.format_number(123456.0) == "1.235e+05"
    assert kr.format_number(float("nan")) == "n/a"
    assert kr.format_number(np.int32(7)) == "7"
    table = pd.DataFrame([{c: 0.123456789 for c, _ in kr.REPORT_COLUMNS}])
    table["run"] = 3
    table["spec"] = "a|b"
    md = kr.markdown_table(table)
    lines = md.strip().split("\n")
    assert len(lines) == 3
    assert "0.1235" in lines[2] and "0.123456789" not in lines[2]
    assert "a\\|b" in lines[2]
    assert lines[0].count("|") == lines[2].count("|") - 1  # the escaped pipe


def test_error_by_step_and_layer():
    steps = pd.DataFrame({
        "sequence": [0, 0, 1, 1, 0, 0], "layer": [0, 1, 0, 1, 0, 1],
        "q_head": [0, 0, 0, 0, 1, 1], "kv_head": [0] * 6, "step": [5, 5, 5, 5, 6, 6],
        "rel_err": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.7], dtype=np.float32),
        "cosine": np.ones(6, np.float32), "mass_retained": np.ones(6, np.float32),
        "kl": np.zeros(6, np.float32)})
    by_step = kr.error_by_step(steps)
    assert by_step.index.tolist() == [5, 6]
    np.testing.assert_allclose(by_step.to_numpy(), [0.25, 0.6], rtol=1e-6)
    run = {"steps": steps, "kv": pd.DataFrame(), "aggregates": pd.DataFrame()}
    np.testing.assert_allclose(kr.error_by_layer(run).to_numpy(), [0.3, 1.3 / 3], rtol=1e-6)
    # Aggregates (scope "layer") take precedence when present.
    run["aggregates"] = pd.DataFrame({
        "metric": ["rel_err", "rel_err", "rel_err", "cosine"],
        "scope": ["overall", "layer", "layer", "layer"], "layer": [-1, 0, 1, 0],
        "head": [-1, -1, -1, -1], "count": [6, 3, 3, 3], "mean": [9.0, 1.5, 2.5, 7.0],
        "p50": [0.0] * 4, "p95": [0.0] * 4, "max": [0.0] * 4})
    assert kr.error_by_layer(run).tolist() == [1.5, 2.5]


def test_per_layer_from_aggregates_matches_steps(typical_file):
    path, _ = typical_file
    res = kr.load_results(path)
    for run in res.runs.values():
        from_agg = kr.error_by_layer(run)
        from_steps = kr.error_by_layer({"steps": run["steps"]})
        np.testing.assert_allclose(from_agg.to_numpy(), from_steps.to_numpy(), rtol=1e-6)


def test_shorten():
    assert kr.shorten("full") == "full"
    s = kr.shorten(LONG_SPEC)
    assert len(s) == kr.MAX_LABEL_CHARS and "…" in s
    assert s.startswith(LONG_SPEC[:10]) and s.endswith(LONG_SPEC[-5:])


# --------------------------------------------------------------------------- report


def test_report_by_import(typical_file, tmp_path, capsys):
    path, summary = typical_file
    out = tmp_path / "report"
    paths = kr.write_report(path, out, quiet=True)
    assert set(paths) == set(REPORT_FILES)
    assert capsys.readouterr().out == ""
    check_report(out)
    assert_csv_matches(out / "summary.csv", summary)
    md = (out / "summary.md").read_text(encoding="utf-8").strip().split("\n")
    assert len(md) == 2 + len(TYPICAL_RUNS)
    specs_in_order = [line.split("|")[2].strip() for line in md[2:]]
    expected = summary.sort_values("memory_ratio", kind="mergesort")["spec"].tolist()
    assert specs_in_order == expected
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "Pareto-optimal" in index and "`full`" in index


def test_report_overwrites_existing_report(typical_file, tmp_path):
    path, _ = typical_file
    out = tmp_path / "report"
    kr.write_report(path, out)
    other = tmp_path / "other.h5"
    summary = write_fake_results(other, [{"spec": "quant(bits=3)", "bits": 3.5, "err": 0.1}])
    kr.write_report(other, out)
    check_report(out)
    assert_csv_matches(out / "summary.csv", summary)


def test_report_via_subprocess(typical_file, tmp_path):
    path, summary = typical_file
    out = tmp_path / "nested" / "report"
    proc = run_script(str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    check_report(out)
    assert_csv_matches(out / "summary.csv", summary)
    # The Markdown table is printed (unless --quiet).
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert md in proc.stdout
    assert "| run | spec | bits/elem | mem ratio |" in proc.stdout


def test_subprocess_quiet(typical_file, tmp_path):
    path, _ = typical_file
    proc = run_script(str(path), "--out", str(tmp_path / "r"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    check_report(tmp_path / "r")


def test_subprocess_errors(tmp_path):
    bad = tmp_path / "bad.h5"
    write_fake_results(bad, TYPICAL_RUNS[:1], version=2)
    proc = run_script(str(bad), "--out", str(tmp_path / "r"))
    assert proc.returncode == 1
    assert "version" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script(str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 1 and "no such file" in proc.stderr
    proc = run_script(str(bad))  # --out is required
    assert proc.returncode == 2
    assert "--out" in proc.stderr


def test_results_without_runs_are_refused(tmp_path):
    # /runs missing, or without any run of /summary: the report would be a summary table
    # over empty figures; refused with the reason, nothing written.
    for drop in (["runs"], ["runs/0000", "runs/0001", "runs/0002"]):
        path = tmp_path / "cut.h5"
        write_fake_results(path, TYPICAL_RUNS[:3])
        with h5py.File(path, "r+") as f:
            for name in drop:
                del f[name]
        out = tmp_path / f"r{len(drop)}"
        proc = run_script(str(path), "--out", str(out))
        assert proc.returncode == 1, proc.stdout
        assert "no /runs group holds any of them" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not out.exists()


def test_single_run(tmp_path):
    path = tmp_path / "one.h5"
    summary = write_fake_results(path, [{"spec": "quant(bits=4)", "bits": 4.5, "err": 0.03}])
    kr.write_report(path, tmp_path / "r")
    check_report(tmp_path / "r")
    assert_csv_matches(tmp_path / "r" / "summary.csv", summary)


def test_single_full_run_one_layer_one_step(tmp_path):
    path = tmp_path / "one.h5"
    write_fake_results(path, [{"spec": "full", "bits": 16, "err": 0.0, "n_layers": 1,
                               "steps": [7], "n_seq": 1, "hq": 1, "hkv": 1}])
    kr.write_report(path, tmp_path / "r")
    check_report(tmp_path / "r")


def test_all_errors_zero(tmp_path):
    path = tmp_path / "zero.h5"
    runs = [{"spec": "full", "bits": 16.0, "err": 0.0},
            {"spec": "lossless(pack=1)", "bits": 12.0, "err": 0.0},
            {"spec": "full(copy)", "bits": 16.0, "err": 0.0}]
    summary = write_fake_results(path, runs)
    assert (summary["rel_err_mean"] == 0).all()
    kr.write_report(path, tmp_path / "r")
    check_report(tmp_path / "r")
    assert_csv_matches(tmp_path / "r" / "summary.csv", summary)
    front = kr.pareto_frontier(summary)
    assert front["spec"].tolist() == ["lossless(pack=1)"]


def test_zero_error_point_with_log_scale(tmp_path):
    # Positive errors spanning more than two decades plus an exact zero.
    path = tmp_path / "r.h5"
    write_fake_results(path, [{"spec": "full", "bits": 16, "err": 0.0},
                              {"spec": "q8", "bits": 8.2, "err": 1e-5},
                              {"spec": "q2", "bits": 2.5, "err": 0.2}])
    kr.write_report(path, tmp_path / "out")
    check_report(tmp_path / "out")
    assert "exactly 0" in (tmp_path / "out" / "index.md").read_text(encoding="utf-8")


def test_long_and_odd_specs_and_many_runs(tmp_path):
    runs = [{"spec": f"{LONG_SPEC}+tag(n={i},$x|y)", "bits": 1.0 + 0.5 * i,
             "err": 0.3 / (1 + i)} for i in range(20)]
    runs.append({"spec": "full", "bits": 16.0, "err": 0.0})
    path = tmp_path / "many.h5"
    summary = write_fake_results(path, runs)
    out = tmp_path / "r"
    proc = run_script(str(path), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    check_report(out)
    assert_csv_matches(out / "summary.csv", summary)
    rows = read_csv_exact(out / "summary.csv")
    assert any(r["spec"] == runs[3]["spec"] for r in rows)  # full spec kept in the CSV


def test_many_layers_and_steps(tmp_path):
    path = tmp_path / "deep.h5"
    runs = [{"spec": f"q{b}", "bits": b + 0.5, "err": 0.2 / b, "n_layers": 64, "n_seq": 1,
             "hq": 2, "hkv": 1, "steps": list(range(100, 400, 5))} for b in (2, 4, 8)]
    write_fake_results(path, runs)
    kr.write_report(path, tmp_path / "r")
    check_report(tmp_path / "r")


def test_run_without_step_rows(tmp_path):
    path = tmp_path / "r.h5"
    write_fake_results(path, TYPICAL_RUNS[:3])
    with h5py.File(path, "a") as f:
        del f["runs/0001"]  # a run listed in /summary without its group
    kr.write_report(path, tmp_path / "out")
    check_report(tmp_path / "out")
    assert "without a /runs group" in (tmp_path / "out" / "index.md").read_text("utf-8")


def test_no_runs(tmp_path):
    path = tmp_path / "empty.h5"
    write_fake_results(path, [])
    res = kr.load_results(path)
    assert res.summary.empty and res.runs == {}
    kr.write_report(res, tmp_path / "out")
    for name in REPORT_FILES:
        assert (tmp_path / "out" / name).stat().st_size > 0
    for name in PNGS:
        with open(tmp_path / "out" / name, "rb") as f:
            assert f.read(8) == PNG_MAGIC


def test_nan_values_are_reported_not_plotted(tmp_path):
    path = tmp_path / "nan.h5"
    summary = write_fake_results(path, TYPICAL_RUNS[:3], summary_override={
        "rel_err_mean": [np.nan, 0.01, 0.2], "memory_ratio": [1.0, np.nan, 0.3]})
    kr.write_report(path, tmp_path / "out")
    check_report(tmp_path / "out")
    rows = read_csv_exact(tmp_path / "out" / "summary.csv")
    assert [int(r["run"]) for r in rows] == [2, 0, 1]  # NaN memory ratio last
    assert rows[1]["rel_err_mean"] == ""
    assert "n/a" in (tmp_path / "out" / "summary.md").read_text("utf-8")
    assert kr.pareto_frontier(summary)["run"].tolist() == [2, 1]
