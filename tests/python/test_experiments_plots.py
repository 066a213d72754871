"""The experiments' plots.py scripts, run on synthetic results files that carry the
experiments' own policy specs: the figures must show the results' numbers.

Each script runs in this process (runpy) with Figure.savefig wrapped, so the test gets
the matplotlib Figure objects it saved and reads back what they draw: axis labels and
scales, the number of series, and each series' x/y data (or bar heights), compared with
the summary values read straight from the HDF5 file with h5py.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from conftest import REPO, write_fake_results  # noqa: E402

MODELS = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
SCALE = {"smollm2": 1.0, "gemma3-270m": 1.7}   # the models' errors differ


def specs(cfg: str) -> list[str]:
    with open(os.path.join(REPO, cfg), encoding="utf-8") as f:
        return [line.split("=", 1)[1].strip() for line in f if line.startswith("policy")]


def fake(path, cfg: str, scale: float) -> None:
    """One run per spec of cfg, with distinct bits and errors (spec i: bits and error
    from coprime strides, so no two runs share both)."""
    runs = []
    for i, spec in enumerate(specs(cfg)):
        runs.append({"spec": spec, "bits": 16.0 if spec == "full" else 1.0 + 0.5 * (i * 3 % 13),
                     "err": 0.0 if spec == "full" else scale * 0.01 * (1 + i * 7 % 11),
                     "n_seq": 1, "n_layers": 2, "steps": [8, 9]})
    n = len(runs)
    write_fake_results(path, runs, summary_override={"memory_ratio_ideal": [0.2] * n})


def raw_summary(path) -> dict[str, dict[str, float]]:
    """{spec: {column: value}} read directly with h5py (not through the analysis code)."""
    with h5py.File(path, "r") as f:
        g = f["summary"]
        spec = [s.decode() if isinstance(s, bytes) else s for s in g["spec"][()]]
        cols = {c: g[c][()] for c in g if c not in ("spec", "resolved")}
    return {s: {c: float(v[i]) for c, v in cols.items()} for i, s in enumerate(spec)}


def run_script(tmp_path, monkeypatch, exp: str, name: str
               ) -> tuple[dict[str, Figure], dict[str, dict[str, dict[str, float]]]]:
    """Write the fake results of both models, run experiments/<exp>/plots.py in-process;
    returns ({png name: Figure saved}, {model: raw summary})."""
    res = tmp_path / "res"
    res.mkdir()
    raw = {}
    for m in MODELS:
        p = res / name.format(m=m)
        fake(p, f"experiments/{exp}/policies.cfg", SCALE[m])
        raw[m] = raw_summary(p)
    figs = tmp_path / "out" / "figures"
    figs.mkdir(parents=True)
    saved: dict[str, Figure] = {}
    original = Figure.savefig

    def savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> Any:
        saved[os.path.basename(str(fname))] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    script = os.path.join(REPO, "experiments", exp, "plots.py")
    monkeypatch.setattr(sys, "argv", [script, str(res), str(figs)])
    plt.close("all")
    runpy.run_path(script, run_name="__main__")
    for f in saved:
        assert (figs / f).stat().st_size > 5000, f
    assert (tmp_path / "out" / "tables.md").stat().st_size > 0
    return saved, raw


def data_axes(fig: Figure) -> list:
    """The figure's plotting axes (colorbars and turned-off axes left out)."""
    return [ax for ax in fig.axes if ax.axison and ax.get_label() != "<colorbar>"]


def line(ax, label: str):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, (label, [ln.get_label() for ln in ax.get_lines()])
    return found[0]


def sorted_by(raw: dict[str, dict[str, float]], names: list[str], key: str, y: str
              ) -> tuple[list[float], list[float]]:
    rows = sorted((raw[s][key], raw[s][y]) for s in names)
    return [r[0] for r in rows], [r[1] for r in rows]


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Brute-force Pareto frontier (lower x and lower y better), sorted by x."""
    keep = [p for p in points
            if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)]
    return sorted(keep)


def test_01_kivi_figures_show_the_results(tmp_path, monkeypatch):
    figs, raw = run_script(tmp_path, monkeypatch, "01_kivi", "{m}.h5")
    assert set(figs) == {"key_axis.png", "group_residual.png"}

    order = [f"uniform:bits={b},group=32,k_axis=token,v_axis=token" if j == 0 else
             f"uniform:bits={b},group=32,k_axis=channel,v_axis=token" if j == 1 else
             f"kivi:bits={b},group=32,residual=128" for b in (2, 4) for j in range(3)]
    axes = data_axes(figs["key_axis.png"])
    assert len(axes) == 2
    for ax, metric in zip(axes, ("key_err_mean", "rel_err_mean")):
        assert ax.get_yscale() == "log"
        assert [c.get_label() for c in ax.containers] == list(MODELS.values())
        for container, m in zip(ax.containers, MODELS):
            heights = [p.get_height() for p in container.patches]
            assert heights == pytest.approx([raw[m][s][metric] for s in order])
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["uniform k_axis=token", "uniform k_axis=channel", "kivi G=32 R=128"] * 2
    assert "K" in axes[0].get_ylabel() and "o" in axes[1].get_ylabel()

    axes = data_axes(figs["group_residual.png"])
    assert len(axes) == 2
    for ax, param, values, fixed in ((axes[0], "group", [8, 16, 32, 64], "residual=128"),
                                     (axes[1], "residual", [32, 64, 128, 256, 512], "group=32")):
        assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
        assert param in ax.get_xlabel()
        assert len(ax.get_lines()) == 2 * len(MODELS)
        for m, title in MODELS.items():
            names = [f"kivi:bits=2,group={v},residual=128" if param == "group" else
                     f"kivi:bits=2,group=32,residual={v}" for v in values]
            for metric, what in (("rel_err_mean", "attention-output rel err"),
                                 ("key_err_mean", "key rel err")):
                ln = line(ax, f"{title}: {what}")
                assert list(ln.get_xdata()) == values, fixed
                assert list(ln.get_ydata()) == pytest.approx([raw[m][s][metric] for s in names])


def test_04_skvq_vs_kivi_figures_show_the_results(tmp_path, monkeypatch):
    figs, raw = run_script(tmp_path, monkeypatch, "04_skvq_vs_kivi", "{m}_policies.h5")
    assert set(figs) == {"skvq_vs_kivi.png", "skvq_ablations.png"}
    axes = data_axes(figs["skvq_vs_kivi.png"])
    assert len(axes) == 2
    for ax, (m, title) in zip(axes, MODELS.items()):
        assert ax.get_title() == title
        assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
        kivi = [s for s in raw[m] if s.startswith("kivi:")]
        base = [s for s in raw[m] if s.startswith("skvq:")
                and not any(k in s for k in ("reorder", "clip"))]
        kivi_xy = [(raw[m][s]["bits_per_element"], raw[m][s]["rel_err_mean"]) for s in kivi]
        base_xy = [(raw[m][s]["bits_per_element"], raw[m][s]["rel_err_mean"]) for s in base]
        scatters = ax.collections
        assert len(scatters) == 3
        assert sorted(map(tuple, scatters[0].get_offsets().tolist())) == pytest.approx(sorted(kivi_xy))
        assert sorted(map(tuple, scatters[1].get_offsets().tolist())) == pytest.approx(sorted(base_xy))
        ternary = [s for s in base if "v_bits=1.5" in s]
        assert len(scatters[2].get_offsets()) == len(ternary)
        assert np.allclose(scatters[2].get_offsets()[:, 0], 16 * 0.2)   # ideal bits
        steps = ax.get_lines()
        assert len(steps) == 2
        for ln, pts in zip(steps, (kivi_xy, base_xy)):
            front = frontier(pts)
            assert list(ln.get_xdata()) == pytest.approx([p[0] for p in front])
            assert list(ln.get_ydata()) == pytest.approx([p[1] for p in front])

    axes = data_axes(figs["skvq_ablations.png"])
    assert len(axes) == 2
    for ax, m in zip(axes, MODELS):
        abl = [s for s in raw[m] if s.startswith("skvq:k_bits=2,v_bits=2,group=32,window=32")
               and "sinks" not in s]
        assert len(abl) == 6
        err, key = ax.containers
        assert sorted(p.get_width() for p in err.patches) == pytest.approx(
            sorted(raw[m][s]["rel_err_mean"] for s in abl))
        assert sorted(p.get_width() for p in key.patches) == pytest.approx(
            sorted(raw[m][s]["key_err_mean"] for s in abl))
        names = [t.get_text() for t in ax.get_yticklabels()]
        assert names[0] == "reorder=true, clip=0.92"
        assert "reorder=false, clip_search" in names and "reorder=true, clip=1.0" in names


def test_05_equal_memory_figure_shows_the_results(tmp_path, monkeypatch):
    figs, raw = run_script(tmp_path, monkeypatch, "05_mikv_h2o_l2", "{m}_policies.h5")
    assert set(figs) == {"equal_memory.png"}
    axes = data_axes(figs["equal_memory.png"])
    assert len(axes) == 2
    for ax, (m, title) in zip(axes, MODELS.items()):
        assert ax.get_title() == title
        assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
        assert ax.get_xlabel() == "memory ratio vs fp16 (achieved, incl. metadata)"
        assert len(ax.get_lines()) == 5   # h2o, l2norm, MiKV INT1/2/3
        for label, prefix in (("H2O (heavy = recent)", "h2o:"),
                              ("l2norm (skip=[])", "l2norm:")):
            names = [s for s in raw[m] if s.startswith(prefix)]
            x, y = sorted_by(raw[m], names, "memory_ratio", "rel_err_mean")
            ln = line(ax, label)
            assert list(ln.get_xdata()) == pytest.approx(x)
            assert list(ln.get_ydata()) == pytest.approx(y)
        for lo in (1, 2, 3):
            names = [s for s in raw[m] if s.startswith(f"mikv:lo_bits={lo},")
                     and "hi_bits" not in s and "importance" not in s]
            x, y = sorted_by(raw[m], names, "memory_ratio", "rel_err_mean")
            ln = line(ax, f"MiKV fp16 important + INT{lo} rest (heavy = recent = 1–10%)")
            assert list(ln.get_xdata()) == pytest.approx(x)
            assert list(ln.get_ydata()) == pytest.approx(y)
            assert (ln.get_linestyle() == "-") == (lo == 2)


def test_06_combinations_figure_shows_the_results(tmp_path, monkeypatch):
    figs, raw = run_script(tmp_path, monkeypatch, "06_combinations", "{m}_policies.h5")
    assert set(figs) == {"combinations.png"}
    axes = data_axes(figs["combinations.png"])
    assert len(axes) == 2
    cfg = specs("experiments/06_combinations/policies.cfg")

    def having(first: str, second: str | None) -> list[str]:
        """The specs whose stages are `first` (and then `second`, if given)."""
        out = [x for x in cfg if x.split(":")[0].split("+")[0] == first
               and (("+" + second) in x if second else "+" not in x)]
        assert out, (first, second)
        return out

    families = {
        "KIVI alone (bits 2, 3, 4)": having("kivi", None),
        "MiniCache alone": having("minicache", None),
        "MiniCache+KIVI (bits 2, 4)": having("minicache", "kivi"),
        "H2O alone": having("h2o", None),
        "H2O+KIVI-4": [x for x in having("h2o", "kivi") if x.endswith("kivi:bits=4")],
        "H2O+KIVI-2": [x for x in having("h2o", "kivi") if x.endswith("kivi:bits=2")],
        "l2norm alone": having("l2norm", None),
        "l2norm+KIVI-4": [x for x in having("l2norm", "kivi") if x.endswith("kivi:bits=4")],
        "l2norm+KIVI-2": [x for x in having("l2norm", "kivi") if x.endswith("kivi:bits=2")],
    }
    assert len(families["H2O alone"]) >= 3 and len(families["KIVI alone (bits 2, 3, 4)"]) == 3
    for ax, (m, title) in zip(axes, MODELS.items()):
        assert ax.get_title() == title
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert sorted(ln.get_label() for ln in ax.get_lines()) == sorted(families)
        for fam, names in families.items():
            x, y = sorted_by(raw[m], names, "memory_ratio", "rel_err_mean")
            ln = line(ax, fam)
            assert list(ln.get_xdata()) == pytest.approx(x)
            assert list(ln.get_ydata()) == pytest.approx(y)
    legend = axes[1].get_legend()
    assert legend is not None and len(legend.get_texts()) == len(families)


def test_configs_are_valid_spec_lists():
    for exp in ("01_kivi", "02_l2norm", "04_skvq_vs_kivi", "05_mikv_h2o_l2", "06_combinations"):
        s = specs(f"experiments/{exp}/policies.cfg")
        assert s and len(s) == len(set(s)), exp
    for cfg in ("gamma.cfg", "start.smollm2.cfg", "start.gemma3-270m.cfg"):
        assert specs(f"experiments/03_minicache/{cfg}")
