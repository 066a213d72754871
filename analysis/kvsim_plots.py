"""The report's figures. Each plot_* function draws one figure from the report's summary
table (kvsim_tables.summary_table) and the runs' tables, writes it as a PNG and returns
notes for index.md. Runs are told apart as kvsim_runstyle says: colour by method
family, marker by composition, labels that show what differs between a method's runs.

    plot_pareto          pareto.png           error vs bits per element, Pareto frontier
    plot_error_vs_step   error_vs_step.png    mean relative error per decode step
    plot_mass_lost       mass_lost.png        attention mass lost by the evicting runs
                         (these two live in kvsim_step_plots and are re-exported here)
    plot_per_layer       per_layer.png        heatmap run x layer of mean relative error
    plot_layer_memory    memory_per_layer.png heatmap run x layer of bits per element
    plot_per_head_error  per_head_error.png   per run, heatmap layer x query head of error
    plot_per_head_memory per_head_memory.png  per run, heatmap layer x KV head of bits
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any, Callable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D

from kvsim_figures import (NUMBERED_ABOVE, X_LABEL, Y_LABEL, context_line, mark_zero_floor,
                           mpl_text, new_figure, norm_for, place_labels, placeholder,
                           save_figure, use_log)
from kvsim_runstyle import ALONE, method_runs, run_styles, style_handles, text_color
from kvsim_step_plots import plot_error_vs_step, plot_mass_lost  # noqa: F401 (re-exported)
from kvsim_tables import (error_by_head, error_by_layer, format_number, memory_by_head,
                          memory_by_layer, pareto_frontier)

Runs = dict[int, dict[str, pd.DataFrame]]
KEY_UP_TO = 60   # pareto.png: up to this many runs, points carry their index and a key


def plot_pareto(table: pd.DataFrame, path: str, attrs: dict[str, Any] | None = None
                ) -> list[str]:
    """Write pareto.png; returns notes for the index.

    A point per run (colour: method family, marker: composition), a line per swept
    method through its own Pareto-optimal runs (x sorted), the frontier of all runs as a
    black staircase. Up to NUMBERED_ABOVE runs every point is labelled; beyond, only
    the Pareto-optimal ones (every run is in summary.md)."""
    attrs = attrs or {}
    notes: list[str] = []
    fig = new_figure(10.5 if len(table) <= NUMBERED_ABOVE else 13.0, 6.5)
    if table.empty:
        placeholder(fig, "no runs in the results file")
        save_figure(fig, path)
        return ["The results file has no runs."]

    runs = [int(r) for r in table["run"]]
    styles = run_styles(table)
    x = table["bits_per_element"].to_numpy(dtype=float)
    y = table["rel_err_mean"].to_numpy(dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    zero = finite & (y == 0)
    pos = finite & (y > 0)
    log = use_log(y[finite])
    skipped = [styles[r].label for r, ok in zip(runs, finite) if not ok]
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
    index = {r: i for i, r in enumerate(runs)}

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
        ax.step(fx, fy, where="post", color="black", lw=1.4, alpha=0.75, zorder=2,
                gid="pareto frontier")
        ax.scatter(x[front_pos], y_plot[front_pos], s=190, facecolors="none",
                   edgecolors="black", linewidths=1.6, zorder=4)

    # A swept method: a curve through its own Pareto-optimal runs, in its family colour.
    for method, members in method_runs(styles).items():
        mine = [index[r] for r in members if finite[index[r]]]
        if len(mine) < 2:
            continue
        own = pareto_frontier(table.iloc[mine].assign(_pos=mine))["_pos"].to_numpy(dtype=int)
        style = styles[members[0]]
        ax.plot(x[own], y_plot[own], color=style.color, lw=1.3, alpha=0.85, zorder=3,
                ls="-" if style.composition == ALONE else "--", gid=f"method {method}")

    for i, r in enumerate(runs):
        if finite[i]:
            ax.scatter([x[i]], [y_plot[i]], s=44, marker=styles[r].marker,
                       color=styles[r].color, edgecolors="black", linewidths=0.5, zorder=5,
                       gid=f"run {r}")

    # Labels: the label of every run (few runs), the run index with a key beside the
    # axes (up to KEY_UP_TO runs), else the labels of the Pareto-optimal runs only.
    keyed = NUMBERED_ABOVE < len(runs) <= KEY_UP_TO
    labelled = [i for i in range(len(runs)) if finite[i]]
    if len(runs) > KEY_UP_TO:
        labelled = sorted(set(int(p) for p in front_pos))
    annotations = []
    for i in labelled:
        r = runs[i]
        text = (styles[r].label if len(runs) <= NUMBERED_ABOVE else str(r)) \
            + (" (error 0)" if zero[i] else "")
        annotations.append(ax.annotate(
            mpl_text(text), (x[i], y_plot[i]), xytext=(6, 5),
            textcoords="offset points", fontsize=7, zorder=6, gid=f"label {r}",
            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7)))

    ax.axvline(16, color="gray", ls="--", lw=1, zorder=1)
    xmax_all = max(16.0, float(np.nanmax(x[finite])) if finite.any() else 16.0)
    ax.set_xlim(0, xmax_all * 1.08)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL + (" [log scale]" if log else ""))
    title = "KV-cache fidelity vs memory (lower-left is better)"
    context = context_line(attrs)
    ax.set_title(title + ("\n" + context if context else ""), fontsize=11)
    ax.grid(True, which="major", alpha=0.3)

    handles = style_handles(styles, [r for r, ok in zip(runs, finite) if ok] or runs)
    handles += [
        Line2D([], [], ls="none", label="lines:"),
        Line2D([], [], color="tab:gray", lw=1.3,
               label="a method's best runs over its grid\n(dashed: composed)"),
        Line2D([], [], color="black", lw=1.4, marker="o", markersize=12,
               markerfacecolor="none", markeredgewidth=1.6, label="Pareto frontier (all runs)"),
        Line2D([], [], color="gray", ls="--", lw=1, label="fp16 full cache (16 bits)"),
    ]
    if zero.any():
        where = "drawn at the bottom of the log axis" if log else "drawn at 0"
        names = ", ".join(styles[r].label for r, z in zip(runs, zero) if z)
        notes.append(f"Runs with mean relative error exactly 0 ({where}): {names}.")
    if log and zero.any():
        mark_zero_floor(ax, floor, float(y[pos].min()))
    if finite.any() and not pos.any():
        ax.text(0.5, 0.5, "every run has attention-output error exactly 0",
                transform=ax.transAxes, ha="center", va="center", fontsize=10, color="gray")
    title = ("labels: every run" if len(runs) <= NUMBERED_ABOVE else
             "labels: run index" if keyed else
             f"labels: index of the {len(labelled)} Pareto-optimal runs\n"
             f"(all {len(runs)} in summary.md)")
    if len(runs) > NUMBERED_ABOVE:  # index -> label, grouped by family
        key_runs = sorted(labelled, key=lambda i: (styles[runs[i]].family,
                                                   styles[runs[i]].label))
        key = [Line2D([], [], ls="none", label="run: label" if keyed
                      else "Pareto-optimal run: label")]
        key += [Line2D([], [], ls="none", marker=styles[runs[i]].marker,
                       color=styles[runs[i]].color, markeredgecolor="black",
                       markeredgewidth=0.4, label=mpl_text(f"{runs[i]}: {styles[runs[i]].label}"))
                for i in key_runs]
        # The key starts a column of its own: pad the columns to equal length.
        rows = max(len(handles), min(36, len(key)))
        blank = lambda: Line2D([], [], ls="none", label=" ")  # noqa: E731
        key_cols = math.ceil(len(key) / rows)
        handles = (handles + [blank() for _ in range(rows - len(handles))] + key
                   + [blank() for _ in range(rows * key_cols - len(key))])
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
              frameon=False, title=title, title_fontsize=7,
              ncol=1 if len(runs) <= NUMBERED_ABOVE else 1 + key_cols)
    place_labels(fig, ax, annotations, np.column_stack([x[finite], y_plot[finite]]))
    save_figure(fig, path)
    return notes


# --------------------------------------------------------------------------- heatmaps


def _run_layer_matrix(table: pd.DataFrame, runs: Runs,
                      by_layer: Callable[[dict[str, pd.DataFrame]], pd.Series]
                      ) -> tuple[list[int], dict[int, str], list[int], np.ndarray]:
    """(run order, run labels, sorted layers, matrix [run, layer]) of a per-layer statistic;
    cells without data are NaN."""
    order = [int(r) for r in table["run"]]
    labels = {r: st.label for r, st in run_styles(table).items()} if order else {}
    per_run = {r: (by_layer(runs[r]) if r in runs else pd.Series([], dtype=float)) for r in order}
    layers = sorted({int(l) for s in per_run.values() for l in s.index})
    matrix = np.full((len(order), len(layers)), np.nan)
    column = {l: j for j, l in enumerate(layers)}
    for i, r in enumerate(order):
        for l, v in per_run[r].items():
            matrix[i, column[int(l)]] = v
    return order, labels, layers, matrix


def _run_ticks(ax: Any, table: pd.DataFrame, order: list[int], labels: dict[int, str]) -> None:
    """Run labels as y tick labels, each in its method family's colour."""
    styles = run_styles(table)
    ax.set_yticks(range(len(order)), [mpl_text(labels[r]) for r in order],
                  fontsize=8 if len(order) <= 40 else 6)
    for tick, r in zip(ax.get_yticklabels(), order):
        tick.set_color(text_color(styles[r].color))


def plot_per_layer(table: pd.DataFrame, runs: Runs,
                   path: str, attrs: dict[str, Any] | None = None) -> list[str]:
    """Write per_layer.png (heatmap run x layer of mean relative error)."""
    attrs = attrs or {}
    notes: list[str] = []
    order, labels, layers, matrix = _run_layer_matrix(table, runs, error_by_layer)
    if not layers:
        fig = new_figure(7, 3)
        placeholder(fig, "no per-layer data in the results file")
        save_figure(fig, path)
        return ["No per-layer data."]
    if np.isnan(matrix).any():
        notes.append("Gray cells in per_layer.png: no data for that run and layer.")

    finite = matrix[np.isfinite(matrix)]
    pos = finite[finite > 0]
    log = use_log(finite)
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

    fig, ax, image, annotate = _layer_heatmap(
        table, order, labels, layers, shown, cmap, norm,
        "Mean attention-output relative error per layer", attrs)
    bar = fig.colorbar(image, ax=ax, extend=extend, shrink=0.95)
    bar.set_label("mean relative error" + (" [log scale]" if log else "")
                  + ("\n(white = exactly 0)" if extend == "min" else ""), fontsize=9)
    if annotate:
        # An exact 0 on a log scale is drawn in the "under" colour, white.
        _label_cells(ax, matrix, lambda i, j, v: cmap(norm(shown[i, j])) if v != 0 or not log
                     else (1, 1, 1, 1), format_number)
    save_figure(fig, path)
    return notes



def _layer_heatmap(table: pd.DataFrame, order: list[int], labels: list[str], layers: list[int],
                   shown: np.ndarray, cmap: Any, norm: Normalize, title: str,
                   attrs: dict[str, Any]) -> tuple[Any, Any, Any, bool]:
    """The run x layer heatmap shared by per_layer.png and memory_per_layer.png: figure sized
    to the matrix, runs as rows (sorted by memory ratio), layers as columns. Returns the
    figure, the axes, the image and whether the cells are few enough to label."""
    n_rows, n_cols = shown.shape
    annotate = n_rows * n_cols <= 160 and n_cols <= 24
    label_width = max(len(labels[r]) for r in order) * 0.075
    cell_w, cell_h = (0.42, 0.42) if annotate else (0.13, 0.3)
    fig = new_figure(min(16.0, max(6.5, 2.8 + label_width + cell_w * n_cols)),
                     min(24.0, max(3.0, 1.9 + cell_h * n_rows)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, norm=norm,
                      interpolation="nearest")
    _run_ticks(ax, table, order, labels)
    step = max(1, math.ceil(n_cols / 32))
    ax.set_xticks(range(0, n_cols, step), [str(layers[j]) for j in range(0, n_cols, step)],
                  fontsize=8)
    ax.set_xlabel("layer (model's original layer index)")
    ax.set_ylabel("run (sorted by memory ratio)")
    context = context_line(attrs)
    ax.set_title(title + ("\n" + context if context else ""), fontsize=11)
    return fig, ax, image, annotate


def _label_cells(ax: Any, matrix: np.ndarray, colour_of: Any, text_of: Any) -> None:
    """Writes each finite cell's value in it, white on dark cells and black on light ones."""
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            v = matrix[i, j]
            if not np.isfinite(v):
                continue
            rgba = colour_of(i, j, v)
            dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
            ax.text(j, i, text_of(v), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")


def plot_layer_memory(table: pd.DataFrame, runs: Runs,
                      path: str, attrs: dict[str, Any] | None = None) -> list[str]:
    """Write memory_per_layer.png: heatmap run x layer of bits per cached element."""
    attrs = attrs or {}
    order, labels, layers, matrix = _run_layer_matrix(table, runs, memory_by_layer)
    if not layers:
        fig = new_figure(7, 3)
        placeholder(fig, "no per-layer memory (kv) data in the results file")
        save_figure(fig, path)
        return ["No per-layer memory data."]
    norm = Normalize(vmin=0.0, vmax=max(16.0, float(np.nanmax(matrix))))
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="#d9d9d9")
    fig, ax, image, annotate = _layer_heatmap(
        table, order, labels, layers, matrix, cmap, norm,
        "Memory per layer: bits per cached K/V element (fp16 = 16)", attrs)
    bar = fig.colorbar(image, ax=ax, shrink=0.95)
    bar.set_label("bits per element (data + metadata)", fontsize=9)
    if annotate:
        _label_cells(ax, matrix, lambda i, j, v: cmap(norm(v)), lambda v: f"{v:.3g}")
    save_figure(fig, path)
    return (["Gray cells in memory_per_layer.png: no kv data for that run and layer."]
            if np.isnan(matrix).any() else [])


MAX_HEAD_PANELS = 12   # per-head figures draw at most this many runs
FLAT_TOLERANCE = 0.02  # a panel whose colours spread less than this share of the scale
MAX_FLAT_LISTED = 24   # runs named in the "not drawn" line of a per-head figure


def flat_panel(values: np.ndarray, norm: Normalize) -> bool:
    """Whether a heatmap panel carries no information: no finite value, or its values
    spread over less than FLAT_TOLERANCE of the colour scale (it shows one colour)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return True
    if isinstance(norm, LogNorm):
        v = v[v > 0]
        if v.size == 0:
            return True
    lo, hi = np.clip(norm(np.array([v.min(), v.max()], dtype=float)), 0.0, 1.0)
    return float(hi - lo) < FLAT_TOLERANCE


def _flat_runs_text(flat: dict[int, pd.DataFrame], styles: dict[int, Any]) -> str:
    """The figure's line naming the runs left out, with their single value."""
    items = []
    for r, m in list(flat.items())[:MAX_FLAT_LISTED]:
        v = m.to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        items.append(f"{styles[r].label} ({format_number(float(np.median(v))) if v.size else 'no data'})")
    more = len(flat) - len(items)
    text = (f"Not drawn: {len(flat)} run(s) of one colour in every layer and head (spread "
            f"< {FLAT_TOLERANCE:.0%} of the colour scale; median value): " + "; ".join(items)
            + (f"; and {more} more (summary.md)" if more > 0 else ""))
    return textwrap.fill(text, 160)


def _head_grid(table: pd.DataFrame, runs: Runs, path: str,
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
        fig = new_figure(7, 3)
        placeholder(fig, "no per-head data in the results file")
        save_figure(fig, path)
        return [f"No per-head data for {os.path.basename(path)}."]
    styles = run_styles(table)
    name = os.path.basename(path)

    def colour_norm(runs_shown: list[int]) -> tuple[Normalize, bool, np.ndarray]:
        values = np.concatenate([mats[r].to_numpy(dtype=float).ravel() for r in runs_shown])
        norm, log = norm_for(values, force_linear=linear)
        if vmin0 is not None and not log:
            hi = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
            if vmax_min is not None:
                hi = max(hi, vmax_min)
            norm = Normalize(vmin=vmin0, vmax=hi if hi > vmin0 else vmin0 + 1.0)
        return norm, log, values

    everything, _, _ = colour_norm(list(mats))
    flat = {r: m for r, m in mats.items() if flat_panel(m.to_numpy(dtype=float), everything)}
    varied = [r for r in mats if r not in flat]
    dropped_text = ""
    if flat:
        dropped_text = _flat_runs_text(flat, styles)
        notes.append(f"{name} leaves out {len(flat)} run(s) that show one colour in every "
                     f"layer and head (they are named under the panels).")
    if not varied:
        fig = new_figure(9, 3.5)
        placeholder(fig, "every run shows one colour in every layer and head\n"
                    + dropped_text)
        save_figure(fig, path)
        return notes
    shown = varied[:MAX_HEAD_PANELS]
    if len(varied) > len(shown):
        notes.append(f"{name} shows the first {len(shown)} of {len(varied)} "
                     "runs (by memory ratio) whose values differ between layers or heads.")
    norm, log, allv = colour_norm(shown)
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="#d9d9d9", under="white")
    n = len(shown)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    n_layers = max(len(mats[r].index) for r in shown)
    n_heads = max(len(mats[r].columns) for r in shown)
    panel_w = max(2.6, 0.28 * n_heads + 1.0)
    labels = {r: textwrap.fill(styles[r].label, max(16, int(panel_w * 13))) for r in shown}
    panel_h = max(2.0, 0.16 * n_layers + 1.0)
    fig = new_figure(panel_w * ncols + 1.4, panel_h * nrows + 1.0
                     + (0.16 * dropped_text.count("\n") + 0.3 if flat else 0.0))
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
        ax.set_title(mpl_text(labels[r]), fontsize=7, color=text_color(styles[r].color))
        if k % ncols == 0:
            ax.set_ylabel("layer", fontsize=8)
        if k // ncols == nrows - 1 or k + ncols >= n:
            ax.set_xlabel(head_label, fontsize=8)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    context = context_line(attrs)
    shown_text = (f"{len(shown)} of {len(varied)} runs whose values differ (by memory ratio)"
                  if len(varied) > len(shown) else "")
    fig.suptitle(title + ("\n" + context if context else "")
                 + ("\n" + shown_text if shown_text else ""), fontsize=11)
    if flat:
        fig.supxlabel(mpl_text(dropped_text), fontsize=7, color="dimgray")
    bar = fig.colorbar(image, ax=axes, shrink=0.9)
    zeros = bool((allv[np.isfinite(allv)] == 0).any())
    bar.set_label(bar_label + (" [log scale]" if log else "")
                  + ("\n(white = exactly 0)" if log and zeros else ""), fontsize=9)
    save_figure(fig, path)
    return notes


def plot_per_head_error(table: pd.DataFrame, runs: Runs, path: str,
                        attrs: dict[str, Any] | None = None) -> list[str]:
    """Write per_head_error.png: per run, heatmap layer x query head of mean rel error."""
    return _head_grid(table, runs, path, attrs or {}, lambda run: error_by_head(run),
                      "Mean attention-output relative error per layer and query head",
                      "mean relative error", "query head", False, "viridis")


def plot_per_head_memory(table: pd.DataFrame, runs: Runs, path: str,
                         attrs: dict[str, Any] | None = None) -> list[str]:
    """Write per_head_memory.png: per run, heatmap layer x KV head of bits per element."""
    return _head_grid(table, runs, path, attrs or {}, memory_by_head,
                      "Bits per cached K/V element per layer and KV head (fp16 = 16)",
                      "bits per element (data + metadata)", "KV head", True, "magma_r",
                      vmin0=0.0, vmax_min=16.0)

