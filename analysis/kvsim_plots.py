"""The report's figures. Each plot_* function draws one figure from the report's summary
table (kvsim_tables.summary_table) and the runs' tables, writes it as a PNG and returns
notes for index.md:

    plot_pareto          pareto.png           error vs bits per element, Pareto frontier
    plot_error_vs_step   error_vs_step.png    mean relative error per measured step
    plot_mass_lost       mass_lost.png        attention mass lost by the evicting runs
    plot_per_layer       per_layer.png        heatmap run x layer of mean relative error
    plot_layer_memory    memory_per_layer.png heatmap run x layer of bits per element
    plot_per_head_error  per_head_error.png   per run, heatmap layer x query head of error
    plot_per_head_memory per_head_memory.png  per run, heatmap layer x KV head of bits
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D

from kvsim_figures import (X_LABEL, Y_LABEL, context_line, mark_zero_floor, mpl_text,
                           new_figure, norm_for, numbered, place_labels, placeholder,
                           run_colors, run_labels, save_figure, use_log)
from kvsim_tables import (error_by_head, error_by_layer, error_by_step, format_number,
                          lossy_mass_runs, mass_lost_by_step, memory_by_head, memory_by_layer,
                          pareto_frontier)

Runs = dict[int, dict[str, pd.DataFrame]]


def plot_pareto(table: pd.DataFrame, path: str, attrs: dict[str, Any] | None = None
                ) -> list[str]:
    """Write pareto.png; returns notes for the index."""
    attrs = attrs or {}
    notes: list[str] = []
    fig = new_figure(8.5, 6.0)
    if table.empty:
        placeholder(fig, "no runs in the results file")
        save_figure(fig, path)
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
    log = use_log(y[finite])
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
            mpl_text(text), (x[i], y_plot[i]), xytext=(6, 5),
            textcoords="offset points", fontsize=8, zorder=3,
            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.6)))

    ax.axvline(16, color="gray", ls="--", lw=1, zorder=1)
    xmax_all = max(16.0, float(np.nanmax(x[finite])) if finite.any() else 16.0)
    ax.set_xlim(0, xmax_all * 1.08)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL + (" [log scale]" if log else ""))
    title = "KV-cache fidelity vs memory (lower-left is better)"
    context = context_line(attrs)
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
        mark_zero_floor(ax, floor, float(y[pos].min()))
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
                              label=mpl_text(key_labels[r]))
                       for i, r in enumerate(runs) if finite[i]]
        ax.legend(handles=key_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=7, frameon=False, title="run: spec", title_fontsize=8,
                  ncol=max(1, math.ceil(len(key_handles) / 40)))

    place_labels(fig, ax, annotations, np.column_stack([x[finite], y_plot[finite]]))
    save_figure(fig, path)
    return notes


def plot_error_vs_step(table: pd.DataFrame, runs: Runs,
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
    fig = new_figure(7.0 + ncol * (0.6 + 0.062 * longest), 5.5)
    if not series:
        placeholder(fig, "no per-step data in the results file")
        save_figure(fig, path)
        return notes

    all_values = np.concatenate([s.to_numpy() for s in series.values()])
    log = use_log(all_values)
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
        ax.plot(s.index.to_numpy(), np.where(zero, floor, values), label=mpl_text(label),
                color=colors[r], lw=1.5, marker="o" if n_points <= 40 else None,
                markersize=3.5)
    if log and (all_values == 0).any():
        mark_zero_floor(ax, floor, float(pos.min()))
    ax.set_xlabel("query token position t (measured steps; decode steps are t ≥ prompt length)")
    ax.set_ylabel("attention-output relative error\n(mean over sequences, layers, heads)"
                  + (" [log scale]" if log else ""))
    context = context_line(attrs)
    ax.set_title("Relative error per measured step" + ("\n" + context if context else ""),
                 fontsize=11)
    ax.grid(True, alpha=0.3)
    if pos.size == 0:
        ax.text(0.5, 0.5, "every run has attention-output error exactly 0",
                transform=ax.transAxes, ha="center", va="center", fontsize=10, color="gray")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, ncol=ncol,
              title="run: spec" if numbered(table) else "run (spec)", title_fontsize=8,
              frameon=False)
    save_figure(fig, path)
    return notes



def plot_mass_lost(table: pd.DataFrame, runs: Runs,
                   path: str, attrs: dict[str, Any] | None = None,
                   prompt_lens: dict[int, int] | None = None) -> list[str]:
    """Write mass_lost.png: for every run that loses attention mass (eviction), the mean
    mass lost (1 - mass retained) as a bar per run and as a line per measured step."""
    attrs = attrs or {}
    lossy = lossy_mass_runs(table)
    if not lossy:
        fig = new_figure(7, 3)
        placeholder(fig, "no run loses attention mass\n(no eviction: mass retained is 1)")
        save_figure(fig, path)
        return ["No run loses attention mass (mass_lost.png is a placeholder)."]
    labels = run_labels(table)
    colors = run_colors([int(r) for r in table["run"]])
    sub = table[table["run"].astype(int).isin(lossy)]
    lost = 1.0 - sub["mass_retained_mean"].astype(float).to_numpy()
    longest = max(len(labels[r]) for r in lossy)
    fig = new_figure(12.5 + 0.06 * longest, max(4.2, 1.6 + 0.28 * len(lossy)))
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.5])
    y = np.arange(len(lossy))
    ax1.barh(y, lost, color=[colors[r] for r in lossy], edgecolor="black", linewidth=0.5)
    ax1.set_yticks(y, [mpl_text(labels[r]) for r in lossy], fontsize=8)
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
                 label=mpl_text(labels[r]))
    ax2.set_xlabel("decode step index t − P (measured steps)" if prompt_lens
                   else "query token position t (measured steps)")
    ax2.set_ylabel("attention mass lost (mean over\nsequences, layers, heads)")
    ax2.set_title("Per measured step", fontsize=10)
    ax2.set_ylim(bottom=0)
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
               title="run (spec)", title_fontsize=8)
    context = context_line(attrs)
    fig.suptitle("Exact attention mass on evicted tokens" + ("\n" + context if context else ""),
                 fontsize=11)
    save_figure(fig, path)
    return []


# --------------------------------------------------------------------------- heatmaps


def _run_layer_matrix(table: pd.DataFrame, runs: Runs,
                      by_layer: Callable[[dict[str, pd.DataFrame]], pd.Series]
                      ) -> tuple[list[int], dict[int, str], list[int], np.ndarray]:
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

    n_rows, n_cols = matrix.shape
    annotate = n_rows * n_cols <= 160 and n_cols <= 24
    label_width = max(len(labels[r]) for r in order) * 0.075
    cell_w, cell_h = (0.42, 0.42) if annotate else (0.13, 0.3)
    width = min(16.0, max(6.5, 2.8 + label_width + cell_w * n_cols))
    height = min(24.0, max(3.0, 1.9 + cell_h * n_rows))
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, norm=norm,
                      interpolation="nearest")
    ax.set_yticks(range(n_rows), [mpl_text(labels[r]) for r in order],
                  fontsize=8 if n_rows <= 40 else 6)
    step = max(1, math.ceil(n_cols / 32))
    ax.set_xticks(range(0, n_cols, step), [str(layers[j]) for j in range(0, n_cols, step)],
                  fontsize=8)
    ax.set_xlabel("layer (model's original layer index)")
    ax.set_ylabel("run (sorted by memory ratio)")
    context = context_line(attrs)
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
    save_figure(fig, path)
    return notes



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
    n_rows, n_cols = matrix.shape
    annotate = n_rows * n_cols <= 160 and n_cols <= 24
    label_width = max(len(labels[r]) for r in order) * 0.075
    cell_w, cell_h = (0.42, 0.42) if annotate else (0.13, 0.3)
    fig = new_figure(min(16.0, max(6.5, 2.8 + label_width + cell_w * n_cols)),
                      min(24.0, max(3.0, 1.9 + cell_h * n_rows)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, norm=norm,
                      interpolation="nearest")
    ax.set_yticks(range(n_rows), [mpl_text(labels[r]) for r in order],
                  fontsize=8 if n_rows <= 40 else 6)
    step = max(1, math.ceil(n_cols / 32))
    ax.set_xticks(range(0, n_cols, step), [str(layers[j]) for j in range(0, n_cols, step)],
                  fontsize=8)
    ax.set_xlabel("layer (model's original layer index)")
    ax.set_ylabel("run (sorted by memory ratio)")
    context = context_line(attrs)
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
    save_figure(fig, path)
    return (["Gray cells in memory_per_layer.png: no kv data for that run and layer."]
            if np.isnan(matrix).any() else [])


MAX_HEAD_PANELS = 12   # per-head figures draw at most this many runs


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
    shown = list(mats)[:MAX_HEAD_PANELS]
    if len(mats) > len(shown):
        notes.append(f"{os.path.basename(path)} shows the first {len(shown)} of {len(mats)} "
                     "runs (by memory ratio).")
    allv = np.concatenate([mats[r].to_numpy(dtype=float).ravel() for r in shown])
    norm, log = norm_for(allv, force_linear=linear)
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
    fig = new_figure(panel_w * ncols + 1.4, panel_h * nrows + 1.0)
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
        ax.set_title(mpl_text(labels[r]), fontsize=7)
        if k % ncols == 0:
            ax.set_ylabel("layer", fontsize=8)
        if k // ncols == nrows - 1 or k + ncols >= n:
            ax.set_xlabel(head_label, fontsize=8)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    context = context_line(attrs)
    fig.suptitle(title + ("\n" + context if context else ""), fontsize=11)
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

