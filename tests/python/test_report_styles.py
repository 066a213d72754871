"""The report's figures read back as matplotlib objects: per-step plots over the decode
step t - P, runs told apart by family colour / composition marker / distinct labels,
one curve per swept method, no panel of one colour (analysis/kvsim_plots.py,
kvsim_step_plots.py, kvsim_runstyle.py)."""

from __future__ import annotations

import os
import re

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from conftest import make_run_tables  # noqa: E402

import kvsim_figures  # noqa: E402
import kvsim_plots  # noqa: E402
import kvsim_step_plots  # noqa: E402
from kvsim_runstyle import parse_spec, run_styles  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """{file name: Figure} of every figure the plot functions save (still written)."""
    captured = {}

    def save(fig, path):
        captured[os.path.basename(path)] = fig
        kvsim_figures.save_figure(fig, path)

    for module in (kvsim_plots, kvsim_step_plots):
        monkeypatch.setattr(module, "save_figure", save)
    return captured


def make_table(specs, resolved=None, bits=None, err=None, mass=None) -> pd.DataFrame:
    n = len(specs)
    return pd.DataFrame({
        "run": np.arange(n), "spec": specs,
        "resolved": resolved if resolved is not None else specs,
        "bits_per_element": bits if bits is not None else np.linspace(2, 8, n),
        "rel_err_mean": err if err is not None else np.linspace(0.4, 0.05, n),
        "mass_retained_mean": mass if mass is not None else np.ones(n),
    })


def by_gid(fig, prefix):
    """{gid: artist} of the figure's lines and collections whose gid starts with prefix."""
    out = {}
    for ax in fig.axes:
        for artist in list(ax.lines) + list(ax.collections):
            gid = artist.get_gid()
            if gid and gid.startswith(prefix):
                out.setdefault(gid, []).append(artist)
    return out


def legend_texts(fig):
    """The texts of every legend of the figure, without section titles and padding."""
    texts = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        texts += [t.get_text() for t in legend.get_texts()
                  if t.get_text().strip() and not t.get_text().endswith(":")]
    return texts


# --------------------------------------------------------------------------- decode steps

def strided_steps(prompt_lens, decode_len, stride, err):
    """A steps table as `--measure stride=N` measures it: decode steps 0, N, 2N, ... and
    the last one, at absolute positions P + d of each sequence; 2 layers x 2 heads."""
    rows = []
    for seq, p in prompt_lens.items():
        measured = list(range(0, decode_len, stride))
        if measured[-1] != decode_len - 1:
            measured.append(decode_len - 1)
        for d in measured:
            for layer in (0, 1):
                for head in (0, 1):
                    rows.append((seq, layer, head, head, p + d, err(seq, d, layer, head)))
    a = pd.DataFrame(rows, columns=["sequence", "layer", "q_head", "kv_head", "step",
                                    "rel_err"])
    a["cosine"] = 1.0
    a["mass_retained"] = 1.0 - a["rel_err"] / 2
    a["kl"] = 0.0
    return a


def test_error_vs_step_plots_the_decode_step_mean_over_the_same_sequences(tmp_path, figures):
    # Prompts of different lengths and a stride: by absolute position t, each point would
    # hold one sequence and alternate between them (the sawtooth of the issue).
    prompt_lens = {0: 171, 1: 183, 2: 186}
    decode_len = {0: 21, 1: 21, 2: 25}  # sequence 2 has 4 more decode steps

    def err(seq, d, layer, head):
        return 0.1 * (1 + seq) + 0.01 * d + 0.001 * layer + 0.0001 * head

    steps = pd.concat([strided_steps({s: p}, decode_len[s], 4, err)
                       for s, p in prompt_lens.items()], ignore_index=True)
    runs = {0: {"steps": steps}, 1: {"steps": steps.assign(rel_err=steps["rel_err"] * 2)}}
    table = make_table(["a:x=1", "b:x=2"])
    kvsim_step_plots.plot_error_vs_step(table, runs, str(tmp_path / "error_vs_step.png"),
                                        {}, prompt_lens)
    lines = by_gid(figures["error_vs_step.png"], "run ")
    # Independent: per decode step, the steps measured in every sequence, mean of all rows.
    per_seq = {}
    for s, p in prompt_lens.items():
        sub = steps[steps["sequence"] == s]
        per_seq[s] = set((sub["step"] - p).tolist())
    common = sorted(set.intersection(*per_seq.values()))
    assert common == [0, 4, 8, 12, 16, 20]
    for r, factor in ((0, 1.0), (1, 2.0)):
        (line,) = lines[f"run {r}"]
        assert list(line.get_xdata()) == common
        want = []
        for d in common:
            values = [factor * err(s, d, layer, head) for s in prompt_lens
                      for layer in (0, 1) for head in (0, 1)]
            want.append(np.mean(values))
        assert np.allclose(line.get_ydata(), want, rtol=1e-12)
        # No sawtooth: the error grows with d in every sequence, so does the mean.
        assert np.all(np.diff(line.get_ydata()) > 0)
    ax = figures["error_vs_step.png"].axes[0]
    assert "t − P" in ax.get_xlabel()


def test_by_decode_step_counts_sequences():
    steps = strided_steps({0: 10, 1: 13}, 9, 4, lambda s, d, l, h: float(s + d))
    from kvsim_tables import by_decode_step
    t = by_decode_step(steps, "rel_err", {0: 10, 1: 13})
    assert t.index.name == "decode_step"
    assert list(t.index) == [0, 4, 8] and list(t["sequences"]) == [2, 2, 2]
    assert np.allclose(t["mean"], [0.5, 4.5, 8.5])
    absolute = by_decode_step(steps, "rel_err", None)
    assert absolute.index.name == "step" and absolute["sequences"].max() == 1


# --------------------------------------------------------------------------- labels, styles

SKVQ_RESOLVED = ("skvq:k_bits=2,v_bits={v},group=32,window=32,sinks=5,clip=0.92,"
                 "clip_search=false,meta=fp16,reorder=true,scope=head,calib=,calib_tokens=512,"
                 "prerope=false")


def test_labels_show_what_differs_and_never_collide():
    specs = ["full", "skvq:k_bits=2,v_bits=2,group=32,window=32",
             "skvq:k_bits=2,v_bits=1.5,group=32,window=32",
             "h2o:heavy=0.1,recent=0.1+kivi:bits=2", "h2o:heavy=0.1,recent=0.1+kivi:bits=4",
             "l2norm:keep_ratio=0.5,skip=[0,1]"]
    resolved = ["full", SKVQ_RESOLVED.format(v=2), SKVQ_RESOLVED.format(v=1.5),
                "h2o:heavy=0.1,recent=0.1+kivi:bits=2,group=32",
                "h2o:heavy=0.1,recent=0.1+kivi:bits=4,group=32",
                "l2norm:keep_ratio=0.5,skip=[0,1]"]
    styles = run_styles(make_table(specs, resolved))
    labels = [styles[r].label for r in range(len(specs))]
    assert labels[1] == "skvq v_bits=2" and labels[2] == "skvq v_bits=1.5"
    assert labels[3] == "h2o+kivi bits=2" and labels[4] == "h2o+kivi bits=4"
    assert labels[5] == specs[5]  # alone in its method: the spec as written, whole
    assert len(set(labels)) == len(labels)
    # Identical specs (e.g. one config over two traces) get the run index.
    twins = run_styles(make_table(["uniform:bits=2", "uniform:bits=2"]))
    assert twins[0].label != twins[1].label
    assert parse_spec("l2norm:skip=[0,1],keep_ratio=0.5+kivi") == [
        ("l2norm", {"skip": "[0,1]", "keep_ratio": "0.5"}), ("kivi", {})]


def _collection_style(coll: PathCollection):
    face = tuple(np.round(coll.get_facecolors()[0], 6))
    marker = tuple(np.round(coll.get_paths()[0].vertices.ravel(), 6))
    return face, marker


@pytest.mark.parametrize("n_grid", [2, 9, 40])
def test_pareto_colours_by_family_marks_by_composition_one_curve_per_method(
        tmp_path, figures, n_grid):
    specs, bits, err = ["full"], [16.0], [0.0]
    rng = np.random.default_rng(n_grid)
    for method in ("uniform:bits={}", "h2o:heavy={}", "h2o:heavy={}+kivi:bits=2",
                   "snapkv:ratio={}+kivi:bits=2"):
        for i in range(n_grid):
            specs.append(method.format(i + 1))
            bits.append(float(rng.uniform(1, 12)))
            err.append(float(rng.uniform(0.01, 0.6)))
    table = make_table(specs, bits=np.array(bits), err=np.array(err))
    kvsim_plots.plot_pareto(table, str(tmp_path / "pareto.png"), {})
    fig = figures["pareto.png"]
    styles = run_styles(table)
    points = by_gid(fig, "run ")
    assert len(points) == len(specs)
    seen = {r: _collection_style(points[f"run {r}"][0]) for r in range(len(specs))}
    for a in range(len(specs)):
        for b in range(len(specs)):
            same_family = styles[a].family == styles[b].family
            same_comp = styles[a].composition == styles[b].composition
            assert (seen[a][0] == seen[b][0]) == same_family, (specs[a], specs[b])
            assert (seen[a][1] == seen[b][1]) == same_comp, (specs[a], specs[b])
    # One curve per swept method, x sorted, through its own Pareto-optimal runs.
    curves = by_gid(fig, "method ")
    assert sorted(curves) == sorted(f"method {m}" for m in
                                    ("uniform", "h2o", "h2o+kivi", "snapkv+kivi"))
    for gid, (line,) in curves.items():
        members = [r for r in range(len(specs)) if f"method {styles[r].method}" == gid]
        own = [r for r in members if not any(
            bits[o] <= bits[r] and err[o] <= err[r] and (bits[o], err[o]) != (bits[r], err[r])
            for o in members)]
        want = sorted((bits[r], err[r]) for r in own)
        x = np.asarray(line.get_xdata())
        assert np.all(np.diff(x) >= 0)
        assert np.allclose(x, [w[0] for w in want])
        assert np.allclose(line.get_ydata(), [w[1] for w in want])
        assert line.get_color() == matplotlib.colors.to_hex(
            styles[members[0]].color, keep_alpha=True) or np.allclose(
            matplotlib.colors.to_rgba(line.get_color()), styles[members[0]].color)
    texts = legend_texts(fig)
    assert len(texts) == len(set(texts)), "two legend entries read the same"
    annotations = [c.get_text() for c in fig.axes[0].texts if c.get_gid()]
    assert len(annotations) == len(set(annotations))


def test_error_vs_step_panels_per_family_beyond_twelve_runs(tmp_path, figures):
    specs = ["full"] + [f"uniform:bits={b}" for b in range(1, 9)] \
        + [f"h2o:heavy=0.{h}" for h in range(1, 9)]
    runs = {}
    for r, spec in enumerate(specs):
        runs[r] = make_run_tables(spec, err=0.0 if spec == "full" else 0.1 + 0.01 * r,
                                  seed=r)
    table = make_table(specs)
    kvsim_step_plots.plot_error_vs_step(table, runs, str(tmp_path / "error_vs_step.png"), {})
    fig = figures["error_vs_step.png"]
    panels = [ax for ax in fig.axes if ax.lines]
    titles = sorted(ax.get_title() for ax in panels)
    # "full" is 0 at every step: no panel of its own, named under the panels instead.
    assert titles == ["h2o (8 runs)", "uniform (8 runs)"]
    for ax in panels:
        family = ax.get_title().split()[0]
        gids = sorted(line.get_gid() for line in ax.lines)
        assert gids == sorted(f"run {r}" for r, s in enumerate(specs)
                              if s.startswith(family + ":"))
    assert "No panel: 0 at every step: full" in fig.get_supxlabel()
    texts = legend_texts(fig)
    assert len(texts) == len(set(texts))


def test_per_head_memory_drops_panels_of_one_colour(tmp_path, figures):
    specs = ["full", "uniform:bits=4", "mixed:layer_bits=2|8", "uniform:bits=2"]
    bits = [16.0, 4.5, 5.0, 2.5]
    runs = {r: make_run_tables(s, bits=b, seed=r) for r, (s, b) in enumerate(zip(specs, bits))}
    kv = runs[2]["kv"]
    kv.loc[kv["layer"] == 1, "data_bits"] *= 4  # one layer at 4x the bits: not one colour
    table = make_table(specs, bits=np.array(bits))
    kvsim_plots.plot_per_head_memory(table, runs, str(tmp_path / "per_head_memory.png"), {})
    fig = figures["per_head_memory.png"]
    images = [(ax, im) for ax in fig.axes for im in ax.images if isinstance(im, AxesImage)]
    assert [ax.get_title() for ax, _ in images] == [specs[2]]
    for _, im in images:
        data = np.ma.masked_invalid(im.get_array()).compressed()
        norm = im.norm
        assert norm(data.max()) - norm(data.min()) >= kvsim_plots.FLAT_TOLERANCE
    dropped = fig.get_supxlabel()
    assert "Not drawn: 3 run(s)" in dropped
    for spec in ("full", "uniform bits=4", "uniform bits=2"):
        assert re.search(re.escape(spec) + r" \(", dropped), spec
