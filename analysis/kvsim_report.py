#!/usr/bin/env python3
"""Turn a kvsim results file (docs/results-format.md, version 1) into a report folder.

Usage:
    python3 analysis/kvsim_report.py results.h5 --out report_dir [--quiet]

Writes into report_dir (created if needed; existing report files are replaced):
    summary.csv        one row per run, sorted by memory ratio (full precision)
    summary.md         the same as a Markdown table (4 significant digits)
    pareto.png         attention-output error vs bits per cached element, Pareto frontier
    error_vs_step.png  mean relative error per measured step, one line per run
    per_layer.png      heatmap of mean relative error per (run, layer)
    memory_per_layer.png  heatmap of bits per cached element per (run, layer), from /kv
    per_head_error.png    per run: heatmap of mean relative error per (layer, query head)
    per_head_memory.png   per run: heatmap of bits per element per (layer, KV head)
    mass_lost.png      attention mass lost (1 - mass retained) of the runs that evict:
                       per run and per measured step
    per_layer.csv      one row per (run, layer): rel err, mass lost, bits per element
    index.md           links to all of the above

Every file is written under a temporary name in report_dir and renamed over its final
name with os.replace, so a file with a final name is always complete.

The functions are importable: load_results, summary_table, pareto_frontier,
error_by_step, error_by_layer, error_by_head, memory_by_layer, memory_by_head,
mass_lost_by_step, lossy_mass_runs, layer_table, markdown_table, write_report, main.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import h5py
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation

FORMAT_NAME = "kvsim-results"
FORMAT_VERSION = 1

# Columns of /summary that version 1 guarantees.
SUMMARY_COLUMNS = [
    "run", "spec", "resolved",
    "rel_err_mean", "rel_err_p95", "cosine_mean", "mass_retained_mean", "kl_mean",
    "key_err_mean", "value_err_mean",
    "data_bits", "meta_bits", "fp16_bits", "memory_ratio", "bits_per_element",
    "seconds",
]
STEPS_COLUMNS = ["sequence", "layer", "q_head", "kv_head", "step",
                 "rel_err", "cosine", "mass_retained", "kl"]
KV_COLUMNS = ["sequence", "layer", "kv_head", "step", "kept_tokens",
              "data_bits", "meta_bits", "fp16_bits", "key_err", "value_err"]
AGGREGATES_COLUMNS = ["metric", "scope", "layer", "head", "count",
                      "mean", "p50", "p95", "max"]
RUN_TABLES = {"steps": STEPS_COLUMNS, "kv": KV_COLUMNS, "aggregates": AGGREGATES_COLUMNS}

# The report's summary columns (in this order), with their Markdown headers.
REPORT_COLUMNS = [
    ("run", "run"),
    ("spec", "spec"),
    ("bits_per_element", "bits/elem"),
    ("memory_ratio", "mem ratio"),
    ("rel_err_mean", "rel err mean"),
    ("rel_err_p95", "rel err p95"),
    ("cosine_mean", "cosine mean"),
    ("mass_retained_mean", "mass kept mean"),
    ("kl_mean", "KL mean"),
    ("key_err_mean", "key err mean"),
    ("value_err_mean", "value err mean"),
]

X_LABEL = "bits per cached element (fp16 = 16)"
Y_LABEL = "attention-output relative error (mean over measured steps)"
LOG_DECADES = 2.0      # use a log axis when positive values span more than this
MAX_LABEL_CHARS = 32   # plot labels longer than this are shortened in the middle
NUMBERED_ABOVE = 12    # with more runs, points are labelled by run index plus a key


# --------------------------------------------------------------------------- loading


@dataclass
class Results:
    """A loaded results file. Also indexable like a dict: results["summary"]."""

    path: str
    attrs: dict[str, Any]
    summary: pd.DataFrame
    runs: dict[int, dict[str, pd.DataFrame]]
    run_attrs: dict[int, dict[str, Any]] = field(default_factory=dict)
    sequences: pd.DataFrame = field(default_factory=pd.DataFrame)  # /sequences, if present

    def __getitem__(self, key: str) -> Any:
        if key in ("path", "attrs", "summary", "runs", "run_attrs"):
            return getattr(self, key)
        return self.attrs[key]

    def __contains__(self, key: str) -> bool:
        return key in ("path", "attrs", "summary", "runs", "run_attrs") or key in self.attrs

    # The file attributes, as conveniences.
    @property
    def format(self) -> str:
        return self.attrs.get("format")

    @property
    def version(self) -> int:
        return self.attrs.get("version")


def _plain(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value (bytes decoded to str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.shape == ():
            return _plain(value[()])
        if value.size == 1:
            return _plain(value.reshape(-1)[0])
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_column(ds: h5py.Dataset, where: str) -> np.ndarray:
    if ds.ndim != 1:
        raise ValueError(f"{where}: column is {ds.ndim}-D, expected 1-D")
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.array(ds.asstr(errors="replace")[()], dtype=object).reshape(-1)
    data = ds[()]
    if data.dtype.kind == "S":  # fixed-length byte strings, decode too
        return np.array([b.decode("utf-8", errors="replace") for b in data], dtype=object)
    if data.dtype.kind == "O":  # defensive: objects that are bytes
        return np.array([_plain(v) for v in data], dtype=object)
    return data


def read_table(group: h5py.Group, preferred: Iterable[str] = ()) -> pd.DataFrame:
    """A group of equal-length 1-D datasets as a DataFrame; strings decoded to str.

    Columns listed in `preferred` come first (in that order), others follow by name.
    """
    where = group.name
    columns: dict[str, np.ndarray] = {}
    for name in group:
        obj = group.get(name)
        if isinstance(obj, h5py.Dataset):
            columns[name] = _read_column(obj, f"{where}/{name}")
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{n}={k}" for n, k in sorted(lengths.items()))
        raise ValueError(f"{where}: columns have different lengths ({detail})")
    preferred = [c for c in preferred if c in columns]
    order = preferred + sorted(c for c in columns if c not in preferred)
    return pd.DataFrame({name: columns[name] for name in order})


def _empty_table(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object if c in ("metric", "scope") else float)
                         for c in columns})


def load_results(path: str | os.PathLike) -> Results:
    """Read a kvsim results file.

    Raises FileNotFoundError if it does not exist and ValueError if it is not an HDF5
    file, its `format` is not "kvsim-results", its `version` is not 1, or /summary is
    missing or lacks a version-1 column.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        fmt = attrs.get("format")
        if fmt != FORMAT_NAME:
            found = "missing" if fmt is None else repr(fmt)
            raise ValueError(f"{path}: not a kvsim results file: root attribute 'format' is "
                             f"{found}, expected {FORMAT_NAME!r}")
        version = attrs.get("version")
        if (not isinstance(version, (int, np.integer)) or isinstance(version, bool)
                or version != FORMAT_VERSION):
            found = "missing" if version is None else f"{version!r} ({type(version).__name__})"
            raise ValueError(f"{path}: unsupported kvsim results version: root attribute "
                             f"'version' is {found}; this reader supports version "
                             f"{FORMAT_VERSION}")
        if not isinstance(f.get("summary"), h5py.Group):
            raise ValueError(f"{path}: group /summary is missing")
        summary = read_table(f["summary"], SUMMARY_COLUMNS)
        missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
        if missing:
            raise ValueError(f"{path}: /summary lacks column(s) {', '.join(missing)} "
                             f"required by version {FORMAT_VERSION}")
        summary["run"] = summary["run"].astype(np.int64)
        for c in ("spec", "resolved"):
            summary[c] = summary[c].astype(object)

        runs: dict[int, dict[str, pd.DataFrame]] = {}
        run_attrs: dict[int, dict[str, Any]] = {}
        runs_group = f.get("runs")
        if isinstance(runs_group, h5py.Group):
            for name in runs_group:
                group = runs_group.get(name)
                if not isinstance(group, h5py.Group) or not name.isdigit():
                    continue
                index = int(name)
                run_attrs[index] = {k: _plain(v) for k, v in group.attrs.items()}
                tables = {}
                for table, columns in RUN_TABLES.items():
                    sub = group.get(table)
                    tables[table] = (read_table(sub, columns) if isinstance(sub, h5py.Group)
                                     else _empty_table(columns))
                runs[index] = tables
        seq_group = f.get("sequences")
        sequences = (read_table(seq_group, ["sequence", "prompt_len", "num_tokens"])
                     if isinstance(seq_group, h5py.Group) else pd.DataFrame())
    return Results(path=path, attrs=attrs, summary=summary, runs=runs, run_attrs=run_attrs,
                   sequences=sequences)


# --------------------------------------------------------------------------- analysis


def summary_table(results_or_summary: Results | pd.DataFrame) -> pd.DataFrame:
    """The report's summary: the report columns first, then every other /summary column.

    Rows sorted by memory ratio (ties by run index; NaN last). Values are unchanged.
    """
    s = (results_or_summary.summary if isinstance(results_or_summary, Results)
         else results_or_summary)
    s = s.sort_values(["memory_ratio", "run"], kind="mergesort", na_position="last")
    first = [c for c, _ in REPORT_COLUMNS if c in s.columns]
    return s[first + [c for c in s.columns if c not in first]].reset_index(drop=True)


def pareto_frontier(df: pd.DataFrame, x: str = "bits_per_element",
                    y: str = "rel_err_mean") -> pd.DataFrame:
    """Rows of df that no other row dominates, where lower x and lower y are better.

    A row is dominated when another has x' <= x and y' <= y with at least one strict.
    Rows with a non-finite x or y are ignored. Exact duplicates of a frontier point are
    all kept (neither dominates the other). Returns the frontier rows (original index)
    sorted by x ascending, so y is strictly decreasing between distinct points.
    """
    xs = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    positions = np.flatnonzero(ok)
    order = positions[np.lexsort((ys[positions], xs[positions]))]
    keep: list[int] = []
    best = math.inf
    last: tuple[float, float] | None = None
    for p in order:
        if ys[p] < best:
            keep.append(p)
            best = ys[p]
            last = (xs[p], ys[p])
        elif last is not None and (xs[p], ys[p]) == last:
            keep.append(p)
    return df.iloc[keep]


def error_by_step(steps: pd.DataFrame, metric: str = "rel_err") -> pd.Series:
    """Mean of `metric` per step (over sequences, layers and heads), indexed by step."""
    if steps.empty or metric not in steps or "step" not in steps:
        return pd.Series([], dtype=float, name=metric)
    values = steps[metric].astype(np.float64)
    return values.groupby(steps["step"].astype(np.int64)).mean().sort_index()


def error_by_layer(run: dict[str, pd.DataFrame], metric: str = "rel_err") -> pd.Series:
    """Mean of `metric` per layer for one run, indexed by layer.

    Taken from the run's aggregates (scope "layer") when present, otherwise computed
    from its steps table.
    """
    agg = run.get("aggregates")
    if agg is not None and not agg.empty and {"metric", "scope", "layer", "mean"} <= set(agg):
        rows = agg[(agg["metric"] == metric) & (agg["scope"] == "layer")]
        if not rows.empty:
            series = rows.groupby(rows["layer"].astype(np.int64))["mean"].mean()
            return series.astype(np.float64).sort_index()
    steps = run.get("steps")
    if steps is None or steps.empty or metric not in steps:
        return pd.Series([], dtype=float, name=metric)
    values = steps[metric].astype(np.float64)
    return values.groupby(steps["layer"].astype(np.int64)).mean().sort_index()


# --------------------------------------------------------------------------- formatting


def format_number(value: Any) -> str:
    """4 significant digits; integers as integers; NaN as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        return f"{v:.4g}"
    return str(value)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(table: pd.DataFrame) -> str:
    """The report columns of a summary_table() as a GitHub Markdown table."""
    cols = [(c, h) for c, h in REPORT_COLUMNS if c in table.columns]
    numeric = [c != "spec" for c, _ in cols]
    lines = ["| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for _, row in table.iterrows():
        cells = [_md_cell(str(row[c])) if c == "spec" else format_number(row[c])
                 for c, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """text, shortened in the middle with an ellipsis when longer than limit."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 3
    tail = limit - 1 - head
    return text[:head] + "…" + text[len(text) - tail:]


def _mpl_text(text: str) -> str:
    # A "$" would start matplotlib mathtext.
    return text.replace("$", r"\$")


def numbered(table: pd.DataFrame) -> bool:
    """Whether plots name runs by index (too many runs for spec labels on points)."""
    return len(table) > NUMBERED_ABOVE


def run_labels(table: pd.DataFrame, limit: int = MAX_LABEL_CHARS) -> dict[int, str]:
    """A short, unique plot label per run: its shortened spec, prefixed by the run
    index when numbered(table)."""
    if numbered(table):
        return {int(r): f"{int(r)}: {shorten(str(s), limit)}"
                for r, s in zip(table["run"], table["spec"])}
    labels = {int(r): shorten(str(s), limit) for r, s in zip(table["run"], table["spec"])}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {r: (f"{label} [run {r}]" if counts[label] > 1 else label)
            for r, label in labels.items()}


def run_colors(runs: list[int]) -> dict[int, Any]:
    n = len(runs)
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return {r: cmap(i) for i, r in enumerate(runs)}
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return {r: cmap(i) for i, r in enumerate(runs)}
    cmap = matplotlib.colormaps["turbo"]
    return {r: cmap(0.05 + 0.9 * i / (n - 1)) for i, r in enumerate(runs)}


def _use_log(values: np.ndarray) -> bool:
    pos = values[np.isfinite(values) & (values > 0)]
    return pos.size >= 2 and math.log10(pos.max() / pos.min()) > LOG_DECADES


def _context_line(attrs: dict[str, Any]) -> str:
    parts = []
    if attrs.get("model_name"):
        parts.append(f"model {shorten(attrs['model_name'], 40)}")
    if attrs.get("trace_id"):
        parts.append(f"trace {shorten(attrs['trace_id'], 24)}")
    if attrs.get("measured_steps"):
        parts.append(f"measured steps: {shorten(attrs['measured_steps'], 20)}")
    return _mpl_text(" · ".join(parts))


# --------------------------------------------------------------------------- files


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp) for a temporary name next to path, then rename it over path."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    _atomic_write(path, write)


def _save_figure(fig: Figure, path: str) -> None:
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                                bbox_inches="tight", pad_inches=0.15))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _placeholder(fig: Figure, message: str) -> None:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, wrap=True)


# --------------------------------------------------------------------------- plots


def _mark_zero_floor(ax, floor: float, lowest_positive: float) -> None:
    """On a log y axis where exact zeros are drawn at `floor`: label that level "0",
    draw a dotted line separating it from the real values and hide tick labels below."""
    cut = math.sqrt(floor * lowest_positive)
    ax.axhline(cut, color="gray", ls=":", lw=0.9, zorder=1)
    inner = LogFormatterSciNotation()
    inner.set_axis(ax.yaxis)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, p: "" if v < cut else inner(v, p)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, p: ""))
    ax.annotate("0", xy=(0, floor), xycoords=ax.get_yaxis_transform(), xytext=(-4, 0),
                textcoords="offset points", ha="right", va="center",
                fontsize=matplotlib.rcParams["ytick.labelsize"])
    ax.annotate("exactly 0 below this line", xy=(1, cut), xycoords=ax.get_yaxis_transform(),
                xytext=(-4, -3), textcoords="offset points", ha="right", va="top",
                fontsize=7, color="gray")


def _place_labels(fig: Figure, ax, annotations: list, points: np.ndarray) -> None:
    """Move point labels so that they overlap each other and the points (given in
    data coordinates, shape (n, 2)) as little as possible."""
    candidates = [((6, 5), "left", "bottom"), ((6, -5), "left", "top"),
                  ((-6, 5), "right", "bottom"), ((-6, -5), "right", "top"),
                  ((0, 9), "center", "bottom"), ((0, -9), "center", "top"),
                  ((10, 14), "left", "bottom"), ((10, -14), "left", "top"),
                  ((-10, 14), "right", "bottom"), ((-10, -14), "right", "top"),
                  ((0, 22), "center", "bottom"), ((0, -22), "center", "top")]
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    axes_box = ax.get_window_extent(renderer)
    radius = 6.0 * fig.dpi / 72.0  # about a marker's size, in pixels
    placed = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)
              for px, py in ax.transData.transform(points)] if len(points) else []

    def cost(box) -> float:
        c = 0.0
        for other in placed:
            w = min(box.x1, other.x1) - max(box.x0, other.x0)
            h = min(box.y1, other.y1) - max(box.y0, other.y0)
            if w > 0 and h > 0:
                c += w * h
        # Leaving the axes costs too (it is not clipped but may hit tick labels).
        out_w = max(0.0, axes_box.x0 - box.x0) + max(0.0, box.x1 - axes_box.x1)
        out_h = max(0.0, axes_box.y0 - box.y0) + max(0.0, box.y1 - axes_box.y1)
        return c + 0.5 * (out_w * box.height + out_h * box.width)

    for ann in annotations:
        best = None
        for offset, ha, va in candidates:
            ann.set_position(offset)
            ann.set_ha(ha)
            ann.set_va(va)
            box = ann.get_window_extent(renderer)
            c = cost(box)
            if best is None or c < best[0]:
                best = (c, offset, ha, va, box)
            if c == 0:
                break
        _, offset, ha, va, box = best
        ann.set_position(offset)
        ann.set_ha(ha)
        ann.set_va(va)
        placed.append(box)


def plot_pareto(table: pd.DataFrame, path: str, attrs: dict[str, Any] | None = None
                ) -> list[str]:
    """Write pareto.png; returns notes for the index."""
    attrs = attrs or {}
    notes: list[str] = []
    fig = _new_figure(8.5, 6.0)
    if table.empty:
        _placeholder(fig, "no runs in the results file")
        _save_figure(fig, path)
        return ["The results file has no runs."]

    runs = [int(r) for r in table["run"]]
    labels = run_labels(table)
    key = numbered(table)
    colors = run_colors(runs)
    x = table["bits_per_element"].to_numpy(dtype=float)
    y = table["rel_err_mean"].to_numpy(dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    zero = finite & (y == 0)
    pos = finite & (y > 0)
    log = _use_log(y[finite])
    skipped = [labels[r] for r, ok in zip(runs, finite) if not ok]
    if skipped:
        notes.append("Not plotted (non-finite bits or error): " + ", ".join(skipped) + ".")

    ax = fig.add_subplot()
    if log:
        lo, hi = y[pos].min(), y[pos].max()
        floor = lo / 10 ** 0.6
        ax.set_yscale("log")
        ax.set_ylim(floor / 10 ** 0.25, hi * 10 ** 0.3)
    else:
        floor = 0.0
        if pos.any():
            hi = y[pos].max()
            ax.set_ylim(-0.06 * hi, hi * 1.12)
        else:
            ax.set_ylim(-0.05, 1.0)
    y_plot = np.where(zero, floor, y)

    front = pareto_frontier(table.assign(_pos=np.arange(len(table)))[finite])
    front_pos = front["_pos"].to_numpy(dtype=int)

    # Pareto frontier: best achievable error at a given memory budget (a staircase).
    if len(front_pos):
        fx = x[front_pos]
        fy = y_plot[front_pos]
        xmax = x[finite].max()
        if xmax > fx[-1]:
            fx = np.append(fx, xmax)
            fy = np.append(fy, fy[-1])
        ax.step(fx, fy, where="post", color="black", lw=1.4, alpha=0.75, zorder=2)
        ax.scatter(x[front_pos], y_plot[front_pos], s=190, facecolors="none",
                   edgecolors="black", linewidths=1.6, zorder=4)

    for i, r in enumerate(runs):
        if not finite[i]:
            continue
        ax.scatter([x[i]], [y_plot[i]], s=60, marker="v" if zero[i] else "o",
                   color=colors[r], edgecolors="black", linewidths=0.5, zorder=5)

    annotations = []
    for i, r in enumerate(runs):
        if not finite[i]:
            continue
        text = str(r) if key else labels[r] + (" (error 0)" if zero[i] else "")
        annotations.append(ax.annotate(
            _mpl_text(text), (x[i], y_plot[i]), xytext=(6, 5),
            textcoords="offset points", fontsize=8, zorder=3,
            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.6)))

    ax.axvline(16, color="gray", ls="--", lw=1, zorder=1)
    xmax_all = max(16.0, float(np.nanmax(x[finite])) if finite.any() else 16.0)
    ax.set_xlim(0, xmax_all * 1.08)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL + (" [log scale]" if log else ""))
    title = "KV-cache fidelity vs memory (lower-left is better)"
    context = _context_line(attrs)
    ax.set_title(title + ("\n" + context if context else ""), fontsize=11)
    ax.grid(True, which="major", alpha=0.3)

    handles = [
        Line2D([], [], ls="none", marker="o", color="tab:gray", markeredgecolor="black",
               markeredgewidth=0.5,
               label="run (labelled with its index)" if key else "run (labelled with its spec)"),
        Line2D([], [], color="black", lw=1.4, marker="o", markersize=12,
               markerfacecolor="none", markeredgewidth=1.6, label="Pareto frontier"),
        Line2D([], [], color="gray", ls="--", lw=1, label="fp16 full cache (16 bits)"),
    ]
    if zero.any():
        where = "drawn at the bottom of the log axis" if log else "drawn at 0"
        handles.append(Line2D([], [], ls="none", marker="v", color="tab:gray",
                              markeredgecolor="black", markeredgewidth=0.5,
                              label=f"error exactly 0 ({where})"))
        names = ", ".join(labels[r] for r, z in zip(runs, zero) if z)
        notes.append(f"Runs with mean relative error exactly 0 ({where}): {names}.")
    if log and zero.any():
        _mark_zero_floor(ax, floor, float(y[pos].min()))
    if finite.any() and not pos.any():
        ax.text(0.5, 0.5, "every run has attention-output error exactly 0",
                transform=ax.transAxes, ha="center", va="center", fontsize=10, color="gray")
    legend = ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)
    if key:
        # Run index -> spec, outside the axes on the right.
        ax.add_artist(legend)
        key_labels = run_labels(table, 48)
        key_handles = [Line2D([], [], ls="none", marker="v" if zero[i] else "o",
                              color=colors[r], markeredgecolor="black", markeredgewidth=0.5,
                              label=_mpl_text(key_labels[r]))
                       for i, r in enumerate(runs) if finite[i]]
        ax.legend(handles=key_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=7, frameon=False, title="run: spec", title_fontsize=8,
                  ncol=max(1, math.ceil(len(key_handles) / 40)))

    _place_labels(fig, ax, annotations, np.column_stack([x[finite], y_plot[finite]]))
    _save_figure(fig, path)
    return notes


def plot_error_vs_step(table: pd.DataFrame, runs: dict[int, dict[str, pd.DataFrame]],
                       path: str, attrs: dict[str, Any] | None = None) -> list[str]:
    """Write error_vs_step.png; returns notes for the index."""
    attrs = attrs or {}
    notes: list[str] = []
    order = [int(r) for r in table["run"]]
    labels = run_labels(table) if not table.empty else {}
    colors = run_colors(order)
    series = {}
    for r in order:
        run = runs.get(r)
        s = error_by_step(run["steps"]) if run is not None else pd.Series([], dtype=float)
        if s.empty:
            notes.append(f"Run {r} ({labels[r]}) has no step rows; not drawn per step.")
        else:
            series[r] = s
    ncol = max(1, math.ceil(len(series) / 30))
    longest = max([len(labels[r]) for r in series] + [10]) + 26  # room for "(error 0 ...)"
    fig = _new_figure(7.0 + ncol * (0.6 + 0.062 * longest), 5.5)
    if not series:
        _placeholder(fig, "no per-step data in the results file")
        _save_figure(fig, path)
        return notes

    all_values = np.concatenate([s.to_numpy() for s in series.values()])
    log = _use_log(all_values)
    ax = fig.add_subplot()
    pos = all_values[np.isfinite(all_values) & (all_values > 0)]
    if log:
        floor = pos.min() / 10 ** 0.6
        ax.set_yscale("log")
        ax.set_ylim(floor / 10 ** 0.25, pos.max() * 10 ** 0.3)
    else:
        floor = 0.0
        if pos.size:
            ax.set_ylim(-0.04 * pos.max(), pos.max() * 1.08)
        else:
            ax.set_ylim(-0.05, 1.0)
    n_points = max(len(s) for s in series.values())
    for r, s in series.items():
        values = s.to_numpy()
        zero = values == 0
        label = labels[r]
        if zero.all():
            label += " (error 0 at every step)"
        elif zero.any() and log:
            label += " (zeros drawn at bottom)"
        ax.plot(s.index.to_numpy(), np.where(zero, floor, values), label=_mpl_text(label),
                color=colors[r], lw=1.5, marker="o" if n_points <= 40 else None,
                markersize=3.5)
    if log and (all_values == 0).any():
        _mark_zero_floor(ax, floor, float(pos.min()))
    ax.set_xlabel("query token position t (measured steps; decode steps are t ≥ prompt length)")
    ax.set_ylabel("attention-output relative error\n(mean over sequences, layers, heads)"
                  + (" [log scale]" if log else ""))
    context = _context_line(attrs)
    ax.set_title("Relative error per measured step" + ("\n" + context if context else ""),
                 fontsize=11)
    ax.grid(True, alpha=0.3)
    if pos.size == 0:
        ax.text(0.5, 0.5, "every run has attention-output error exactly 0",
                transform=ax.transAxes, ha="center", va="center", fontsize=10, color="gray")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, ncol=ncol,
              title="run: spec" if numbered(table) else "run (spec)", title_fontsize=8,
              frameon=False)
    _save_figure(fig, path)
    return notes


def _run_layer_matrix(table: pd.DataFrame, runs: dict[int, dict[str, pd.DataFrame]],
                      by_layer: Callable[[dict[str, pd.DataFrame]], pd.Series]):
    """(run order, run labels, sorted layers, matrix [run, layer]) of a per-layer statistic;
    cells without data are NaN."""
    order = [int(r) for r in table["run"]]
    labels = run_labels(table) if not table.empty else {}
    per_run = {r: (by_layer(runs[r]) if r in runs else pd.Series([], dtype=float)) for r in order}
    layers = sorted({int(l) for s in per_run.values() for l in s.index})
    matrix = np.full((len(order), len(layers)), np.nan)
    column = {l: j for j, l in enumerate(layers)}
    for i, r in enumerate(order):
        for l, v in per_run[r].items():
            matrix[i, column[int(l)]] = v
    return order, labels, layers, matrix


def plot_per_layer(table: pd.DataFrame, runs: dict[int, dict[str, pd.DataFrame]],
                   path: str, attrs: dict[str, Any] | None = None) -> list[str]:
    """Write per_layer.png (heatmap run x layer of mean relative error)."""
    attrs = attrs or {}
    notes: list[str] = []
    order, labels, layers, matrix = _run_layer_matrix(table, runs, error_by_layer)
    if not layers:
        fig = _new_figure(7, 3)
        _placeholder(fig, "no per-layer data in the results file")
        _save_figure(fig, path)
        return ["No per-layer data."]
    if np.isnan(matrix).any():
        notes.append("Gray cells in per_layer.png: no data for that run and layer.")

    finite = matrix[np.isfinite(matrix)]
    pos = finite[finite > 0]
    log = _use_log(finite)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9", under="white")
    shown = matrix.copy()
    extend = "neither"
    if log:
        norm = LogNorm(vmin=pos.min(), vmax=pos.max())
        if (finite == 0).any():
            shown[shown == 0] = pos.min() / 10  # below vmin -> the "under" colour
            extend = "min"
    else:
        hi = pos.max() if pos.size else 1.0
        norm = Normalize(vmin=0.0, vmax=hi)

    n_rows, n_cols = matrix.shape
    annotate = n_rows * n_cols <= 160 and n_cols <= 24
    label_width = max(len(labels[r]) for r in order) * 0.075
    cell_w, cell_h = (0.42, 0.42) if annotate else (0.13, 0.3)
    width = min(16.0, max(6.5, 2.8 + label_width + cell_w * n_cols))
    height = min(24.0, max(3.0, 1.9 + cell_h * n_rows))
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, norm=norm,
                      interpolation="nearest")
    ax.set_yticks(range(n_rows), [_mpl_text(labels[r]) for r in order],
                  fontsize=8 if n_rows <= 40 else 6)
    step = max(1, math.ceil(n_cols / 32))
    ax.set_xticks(range(0, n_cols, step), [str(layers[j]) for j in range(0, n_cols, step)],
                  fontsize=8)
    ax.set_xlabel("layer (model's original layer index)")
    ax.set_ylabel("run (sorted by memory ratio)")
    context = _context_line(attrs)
    ax.set_title("Mean attention-output relative error per layer"
                 + ("\n" + context if context else ""), fontsize=11)
    bar = fig.colorbar(image, ax=ax, extend=extend, shrink=0.95)
    bar.set_label("mean relative error" + (" [log scale]" if log else "")
                  + ("\n(white = exactly 0)" if extend == "min" else ""), fontsize=9)

    if annotate:
        for i in range(n_rows):
            for j in range(n_cols):
                v = matrix[i, j]
                if not np.isfinite(v):
                    continue
                rgba = cmap(norm(shown[i, j])) if v != 0 or not log else (1, 1, 1, 1)
                dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                ax.text(j, i, format_number(v), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    _save_figure(fig, path)
    return notes


# --------------------------------------------------------------------------- per head, memory, mass


def memory_by_layer(run: dict[str, pd.DataFrame]) -> pd.Series:
    """Bits per cached element per layer for one run, from its kv table:
    16 * sum(data_bits + meta_bits) / sum(fp16_bits) over the layer's rows."""
    kv = run.get("kv")
    if kv is None or kv.empty or not {"layer", "data_bits", "meta_bits", "fp16_bits"} <= set(kv):
        return pd.Series([], dtype=float, name="bits_per_element")
    stored = kv["data_bits"].astype(np.float64) + kv["meta_bits"].astype(np.float64)
    g = pd.DataFrame({"layer": kv["layer"].astype(np.int64), "stored": stored,
                      "fp16": kv["fp16_bits"].astype(np.float64)}).groupby("layer").sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 16.0 * g["stored"] / g["fp16"]
    return out.rename("bits_per_element").sort_index()


def memory_by_head(run: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Bits per cached element per (layer, KV head): a DataFrame indexed by layer with
    one column per KV head (16 * stored bits / fp16 bits over the cell's kv rows)."""
    kv = run.get("kv")
    if kv is None or kv.empty or not {"layer", "kv_head", "data_bits", "meta_bits",
                                      "fp16_bits"} <= set(kv):
        return pd.DataFrame()
    g = pd.DataFrame({"layer": kv["layer"].astype(np.int64),
                      "head": kv["kv_head"].astype(np.int64),
                      "stored": kv["data_bits"].astype(np.float64)
                      + kv["meta_bits"].astype(np.float64),
                      "fp16": kv["fp16_bits"].astype(np.float64)}).groupby(["layer", "head"]).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = 16.0 * g["stored"] / g["fp16"]
    return bits.unstack("head").sort_index()


def error_by_head(run: dict[str, pd.DataFrame], metric: str = "rel_err") -> pd.DataFrame:
    """Mean of `metric` per (layer, query head) for one run: a DataFrame indexed by layer
    with one column per query head. From the aggregates (scope "head") when present,
    otherwise from the steps table."""
    agg = run.get("aggregates")
    if agg is not None and not agg.empty and {"metric", "scope", "layer", "head",
                                              "mean"} <= set(agg):
        rows = agg[(agg["metric"] == metric) & (agg["scope"] == "head")]
        if not rows.empty:
            m = rows.assign(layer=rows["layer"].astype(np.int64),
                            head=rows["head"].astype(np.int64),
                            mean=rows["mean"].astype(np.float64))
            return m.groupby(["layer", "head"])["mean"].mean().unstack("head").sort_index()
    steps = run.get("steps")
    if steps is None or steps.empty or metric not in steps:
        return pd.DataFrame()
    m = pd.DataFrame({"layer": steps["layer"].astype(np.int64),
                      "head": steps["q_head"].astype(np.int64),
                      "v": steps[metric].astype(np.float64)})
    return m.groupby(["layer", "head"])["v"].mean().unstack("head").sort_index()


def mass_lost_by_step(steps: pd.DataFrame,
                      prompt_lens: dict[int, int] | None = None) -> pd.Series:
    """Mean attention mass lost (1 - mass_retained) per step, indexed by step; with
    prompt_lens ({sequence: prompt length}, from /sequences) indexed by the decode step
    index t - P instead, so that sequences of different prompt lengths line up."""
    if prompt_lens and not steps.empty and "sequence" in steps:
        p = steps["sequence"].astype(np.int64).map(prompt_lens)
        if p.notna().all():
            steps = steps.assign(step=steps["step"].astype(np.int64) - p.astype(np.int64))
    s = error_by_step(steps, "mass_retained")
    return (1.0 - s).rename("mass_lost")


def lossy_mass_runs(table: pd.DataFrame, tol: float = 1e-6) -> list[int]:
    """Runs (in table order) that lose attention mass: mass_retained_mean < 1 - tol.
    Those are the runs with an evict stage that dropped something (quantize and merge
    stages keep every token, so their mass retained is 1)."""
    m = pd.to_numeric(table["mass_retained_mean"], errors="coerce")
    return [int(r) for r, v in zip(table["run"], m) if np.isfinite(v) and v < 1.0 - tol]


def layer_table(table: pd.DataFrame, runs: dict[int, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """Long table, one row per (run, layer): spec, mean rel_err, mean mass lost and
    bits per element of that layer (per_layer.csv)."""
    rows = []
    for r, spec in zip(table["run"], table["spec"]):
        run = runs.get(int(r))
        if run is None:
            continue
        err = error_by_layer(run, "rel_err")
        mass = error_by_layer(run, "mass_retained")
        bits = memory_by_layer(run)
        for layer in sorted(set(err.index) | set(bits.index)):
            rows.append({"run": int(r), "spec": spec, "layer": int(layer),
                         "rel_err_mean": float(err.get(layer, np.nan)),
                         "mass_lost_mean": float(1.0 - mass.get(layer, np.nan)),
                         "bits_per_element": float(bits.get(layer, np.nan))})
    return pd.DataFrame(rows, columns=["run", "spec", "layer", "rel_err_mean",
                                       "mass_lost_mean", "bits_per_element"])


def _norm_for(values: np.ndarray, force_linear: bool = False):
    finite = values[np.isfinite(values)]
    pos = finite[finite > 0]
    if not force_linear and _use_log(finite):
        return LogNorm(vmin=pos.min(), vmax=pos.max()), True
    hi = float(finite.max()) if finite.size else 1.0
    lo = float(min(0.0, finite.min())) if finite.size else 0.0
    return Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0), False


def plot_layer_memory(table: pd.DataFrame, runs: dict[int, dict[str, pd.DataFrame]],
                      path: str, attrs: dict[str, Any] | None = None) -> list[str]:
    """Write memory_per_layer.png: heatmap run x layer of bits per cached element."""
    attrs = attrs or {}
    order, labels, layers, matrix = _run_layer_matrix(table, runs, memory_by_layer)
    if not layers:
        fig = _new_figure(7, 3)
        _placeholder(fig, "no per-layer memory (kv) data in the results file")
        _save_figure(fig, path)
        return ["No per-layer memory data."]
    norm = Normalize(vmin=0.0, vmax=max(16.0, float(np.nanmax(matrix))))
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="#d9d9d9")
    n_rows, n_cols = matrix.shape
    annotate = n_rows * n_cols <= 160 and n_cols <= 24
    label_width = max(len(labels[r]) for r in order) * 0.075
    cell_w, cell_h = (0.42, 0.42) if annotate else (0.13, 0.3)
    fig = _new_figure(min(16.0, max(6.5, 2.8 + label_width + cell_w * n_cols)),
                      min(24.0, max(3.0, 1.9 + cell_h * n_rows)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, norm=norm,
                      interpolation="nearest")
    ax.set_yticks(range(n_rows), [_mpl_text(labels[r]) for r in order],
                  fontsize=8 if n_rows <= 40 else 6)
    step = max(1, math.ceil(n_cols / 32))
    ax.set_xticks(range(0, n_cols, step), [str(layers[j]) for j in range(0, n_cols, step)],
                  fontsize=8)
    ax.set_xlabel("layer (model's original layer index)")
    ax.set_ylabel("run (sorted by memory ratio)")
    context = _context_line(attrs)
    ax.set_title("Memory per layer: bits per cached K/V element (fp16 = 16)"
                 + ("\n" + context if context else ""), fontsize=11)
    bar = fig.colorbar(image, ax=ax, shrink=0.95)
    bar.set_label("bits per element (data + metadata)", fontsize=9)
    if annotate:
        for i in range(n_rows):
            for j in range(n_cols):
                v = matrix[i, j]
                if np.isfinite(v):
                    rgba = cmap(norm(v))
                    dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    _save_figure(fig, path)
    return (["Gray cells in memory_per_layer.png: no kv data for that run and layer."]
            if np.isnan(matrix).any() else [])


MAX_HEAD_PANELS = 12   # per-head figures draw at most this many runs


def _head_grid(table: pd.DataFrame, runs: dict[int, dict[str, pd.DataFrame]], path: str,
               attrs: dict[str, Any], getter: Callable[[dict[str, pd.DataFrame]], pd.DataFrame],
               title: str, bar_label: str, head_label: str, linear: bool,
               cmap_name: str, vmin0: float | None = None,
               vmax_min: float | None = None) -> list[str]:
    notes: list[str] = []
    order = [int(r) for r in table["run"]]
    mats = {}
    for r in order:
        m = getter(runs[r]) if r in runs else pd.DataFrame()
        if not m.empty:
            mats[r] = m
    if not mats:
        fig = _new_figure(7, 3)
        _placeholder(fig, "no per-head data in the results file")
        _save_figure(fig, path)
        return [f"No per-head data for {os.path.basename(path)}."]
    shown = list(mats)[:MAX_HEAD_PANELS]
    if len(mats) > len(shown):
        notes.append(f"{os.path.basename(path)} shows the first {len(shown)} of {len(mats)} "
                     "runs (by memory ratio).")
    allv = np.concatenate([mats[r].to_numpy(dtype=float).ravel() for r in shown])
    norm, log = _norm_for(allv, force_linear=linear)
    if vmin0 is not None and not log:
        hi = float(np.nanmax(allv)) if np.isfinite(allv).any() else 1.0
        if vmax_min is not None:
            hi = max(hi, vmax_min)
        norm = Normalize(vmin=vmin0, vmax=hi if hi > vmin0 else vmin0 + 1.0)
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="#d9d9d9", under="white")
    n = len(shown)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    n_layers = max(len(mats[r].index) for r in shown)
    n_heads = max(len(mats[r].columns) for r in shown)
    panel_w = max(2.6, 0.28 * n_heads + 1.0)
    labels = run_labels(table, int(panel_w * 12)) if not table.empty else {}
    panel_h = max(2.0, 0.16 * n_layers + 1.0)
    fig = _new_figure(panel_w * ncols + 1.4, panel_h * nrows + 1.0)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for k, r in enumerate(shown):
        ax = axes[k // ncols][k % ncols]
        m = mats[r]
        data = m.to_numpy(dtype=float)
        if log:
            data = np.where(data == 0, norm.vmin / 10, data)
        image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, norm=norm,
                          interpolation="nearest")
        layers = [int(l) for l in m.index]
        step = max(1, math.ceil(len(layers) / 16))
        ax.set_yticks(range(0, len(layers), step), [str(layers[j]) for j in
                                                    range(0, len(layers), step)], fontsize=7)
        heads = [int(h) for h in m.columns]
        hstep = max(1, math.ceil(len(heads) / 12))
        ax.set_xticks(range(0, len(heads), hstep), [str(heads[j]) for j in
                                                    range(0, len(heads), hstep)], fontsize=7)
        ax.set_title(_mpl_text(labels[r]), fontsize=7)
        if k % ncols == 0:
            ax.set_ylabel("layer", fontsize=8)
        if k // ncols == nrows - 1 or k + ncols >= n:
            ax.set_xlabel(head_label, fontsize=8)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    context = _context_line(attrs)
    fig.suptitle(title + ("\n" + context if context else ""), fontsize=11)
    bar = fig.colorbar(image, ax=axes, shrink=0.9)
    zeros = bool((allv[np.isfinite(allv)] == 0).any())
    bar.set_label(bar_label + (" [log scale]" if log else "")
                  + ("\n(white = exactly 0)" if log and zeros else ""), fontsize=9)
    _save_figure(fig, path)
    return notes


def plot_per_head_error(table, runs, path, attrs=None) -> list[str]:
    """Write per_head_error.png: per run, heatmap layer x query head of mean rel error."""
    return _head_grid(table, runs, path, attrs or {}, lambda run: error_by_head(run),
                      "Mean attention-output relative error per layer and query head",
                      "mean relative error", "query head", False, "viridis")


def plot_per_head_memory(table, runs, path, attrs=None) -> list[str]:
    """Write per_head_memory.png: per run, heatmap layer x KV head of bits per element."""
    return _head_grid(table, runs, path, attrs or {}, memory_by_head,
                      "Bits per cached K/V element per layer and KV head (fp16 = 16)",
                      "bits per element (data + metadata)", "KV head", True, "magma_r",
                      vmin0=0.0, vmax_min=16.0)


def plot_mass_lost(table: pd.DataFrame, runs: dict[int, dict[str, pd.DataFrame]],
                   path: str, attrs: dict[str, Any] | None = None,
                   prompt_lens: dict[int, int] | None = None) -> list[str]:
    """Write mass_lost.png: for every run that loses attention mass (eviction), the mean
    mass lost (1 - mass retained) as a bar per run and as a line per measured step."""
    attrs = attrs or {}
    lossy = lossy_mass_runs(table)
    if not lossy:
        fig = _new_figure(7, 3)
        _placeholder(fig, "no run loses attention mass\n(no eviction: mass retained is 1)")
        _save_figure(fig, path)
        return ["No run loses attention mass (mass_lost.png is a placeholder)."]
    labels = run_labels(table)
    colors = run_colors([int(r) for r in table["run"]])
    sub = table[table["run"].astype(int).isin(lossy)]
    lost = 1.0 - sub["mass_retained_mean"].astype(float).to_numpy()
    longest = max(len(labels[r]) for r in lossy)
    fig = _new_figure(12.5 + 0.06 * longest, max(4.2, 1.6 + 0.28 * len(lossy)))
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.5])
    y = np.arange(len(lossy))
    ax1.barh(y, lost, color=[colors[r] for r in lossy], edgecolor="black", linewidth=0.5)
    ax1.set_yticks(y, [_mpl_text(labels[r]) for r in lossy], fontsize=8)
    ax1.invert_yaxis()
    for yi, v in zip(y, lost):
        ax1.text(v, yi, f" {v:.3g}", va="center", fontsize=7)
    ax1.set_xlim(0, max(float(lost.max()) * 1.25, 1e-3))
    ax1.set_xlabel("attention mass lost, 1 − mass retained\n(mean over measured steps)")
    ax1.set_title("Per run", fontsize=10)
    ax1.grid(True, axis="x", alpha=0.3)
    for r in lossy:
        run = runs.get(r)
        if run is None or run["steps"].empty:
            continue
        s = mass_lost_by_step(run["steps"], prompt_lens)
        ax2.plot(s.index.to_numpy(), s.to_numpy(), color=colors[r], lw=1.5,
                 marker="o" if len(s) <= 40 else None, markersize=3,
                 label=_mpl_text(labels[r]))
    ax2.set_xlabel("decode step index t − P (measured steps)" if prompt_lens
                   else "query token position t (measured steps)")
    ax2.set_ylabel("attention mass lost (mean over\nsequences, layers, heads)")
    ax2.set_title("Per measured step", fontsize=10)
    ax2.set_ylim(bottom=0)
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
               title="run (spec)", title_fontsize=8)
    context = _context_line(attrs)
    fig.suptitle("Exact attention mass on evicted tokens" + ("\n" + context if context else ""),
                 fontsize=11)
    _save_figure(fig, path)
    return []


# --------------------------------------------------------------------------- report


def _index_markdown(results: Results, table: pd.DataFrame, front: pd.DataFrame,
                    notes: list[str], source: str) -> str:
    a = results.attrs
    lines = ["# kvsim report", ""]
    info = [("results file", f"`{source}`"),
            ("kvsim version", a.get("kvsim_version")),
            ("trace", f"`{a['trace_path']}`" if a.get("trace_path") else None),
            ("trace id", f"`{a['trace_id']}`" if a.get("trace_id") else None),
            ("model", a.get("model_name")),
            ("measured steps", f"`{a['measured_steps']}`" if a.get("measured_steps") else None),
            ("runs", str(len(table)))]
    for key, value in info:
        if value not in (None, ""):
            lines.append(f"- **{key}:** {value}")
    lines += ["", "## Files", "",
              "- [summary.md](summary.md): one row per run, sorted by memory ratio",
              "- [summary.csv](summary.csv): the same, every /summary column, full precision",
              "- [pareto.png](pareto.png): error vs bits per cached element, Pareto frontier",
              "- [error_vs_step.png](error_vs_step.png): mean relative error per measured step",
              "- [per_layer.png](per_layer.png): mean relative error per run and layer",
              "- [memory_per_layer.png](memory_per_layer.png): bits per element per run and layer",
              "- [per_head_error.png](per_head_error.png): relative error per layer and query head",
              "- [per_head_memory.png](per_head_memory.png): bits per element per layer and KV head",
              "- [mass_lost.png](mass_lost.png): attention mass lost by eviction, per run and step",
              "- [per_layer.csv](per_layer.csv): per (run, layer) error, mass lost and bits",
              "", "## Summary", "", markdown_table(table).rstrip("\n"), "",
              "## Fidelity vs memory", "", "![fidelity vs memory](pareto.png)", ""]
    if len(front):
        lines.append("Pareto-optimal runs (no other run has both fewer bits and lower error):")
        lines.append("")
        for _, row in front.iterrows():
            lines.append(f"- `{row['spec']}`: {format_number(row['bits_per_element'])} bits, "
                         f"rel err {format_number(row['rel_err_mean'])}")
        lines.append("")
    lines += ["## Error per step", "", "![error per step](error_vs_step.png)", "",
              "## Error per layer", "", "![error per layer](per_layer.png)", "",
              "## Memory per layer", "", "![memory per layer](memory_per_layer.png)", "",
              "## Per head", "", "![error per head](per_head_error.png)", "",
              "![memory per head](per_head_memory.png)", "",
              "## Attention mass lost (eviction)", "", "![mass lost](mass_lost.png)", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_report(results: Results | str | os.PathLike, out_dir: str | os.PathLike,
                 quiet: bool = True) -> dict[str, str]:
    """Write the report folder; returns {name: path} of the files written."""
    if not isinstance(results, Results):
        results = load_results(results)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in
             ("summary.csv", "summary.md", "pareto.png", "error_vs_step.png",
              "per_layer.png", "memory_per_layer.png", "per_head_error.png",
              "per_head_memory.png", "mass_lost.png", "per_layer.csv", "index.md")}

    table = summary_table(results)
    md = markdown_table(table)
    _atomic_write(paths["summary.csv"], lambda tmp: table.to_csv(tmp, index=False))
    _write_text(paths["summary.md"], md)
    if not quiet:
        sys.stdout.write(md)
        sys.stdout.flush()

    notes: list[str] = []
    notes += plot_pareto(table, paths["pareto.png"], results.attrs)
    notes += plot_error_vs_step(table, results.runs, paths["error_vs_step.png"],
                                results.attrs)
    notes += plot_per_layer(table, results.runs, paths["per_layer.png"], results.attrs)
    notes += plot_layer_memory(table, results.runs, paths["memory_per_layer.png"],
                               results.attrs)
    notes += plot_per_head_error(table, results.runs, paths["per_head_error.png"],
                                 results.attrs)
    notes += plot_per_head_memory(table, results.runs, paths["per_head_memory.png"],
                                  results.attrs)
    prompt_lens = None
    if {"sequence", "prompt_len"} <= set(results.sequences.columns):
        prompt_lens = {int(a): int(b) for a, b in zip(results.sequences["sequence"],
                                                      results.sequences["prompt_len"])}
    notes += plot_mass_lost(table, results.runs, paths["mass_lost.png"], results.attrs,
                            prompt_lens)
    layers = layer_table(table, results.runs)
    _atomic_write(paths["per_layer.csv"], lambda tmp: layers.to_csv(tmp, index=False))
    missing = sorted(set(int(r) for r in table["run"]) - set(results.runs))
    if missing:
        notes.append("Runs listed in /summary without a /runs group: "
                     + ", ".join(str(r) for r in missing) + ".")
    front = pareto_frontier(table) if not table.empty else table
    index = _index_markdown(results, table, front, notes, os.path.basename(results.path))
    _write_text(paths["index.md"], index)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvsim_report.py",
        description="Turn a kvsim results file (HDF5, docs/results-format.md) into a report "
                    "folder: summary.csv, summary.md, pareto.png, error_vs_step.png, "
                    "per_layer.png, memory_per_layer.png, per_head_error.png, "
                    "per_head_memory.png, mass_lost.png, per_layer.csv and index.md.")
    parser.add_argument("results", help="results file written by `kvsim replay --out`")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="report folder (created if needed; report files are replaced)")
    parser.add_argument("--quiet", action="store_true",
                        help="do not print the summary table and the report location")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    try:
        paths = write_report(args.results, args.out, quiet=args.quiet)
    except (ValueError, OSError) as e:  # OSError includes FileNotFoundError
        print(f"kvsim_report: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"\nreport written to {paths['index.md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
