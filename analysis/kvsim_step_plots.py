"""The report's per-step figures, over the decode step t - P so that sequences of
different prompt lengths line up (each point averages the same sequences):

    plot_error_vs_step   error_vs_step.png   mean relative error per decode step
    plot_mass_lost       mass_lost.png       attention mass lost by the evicting runs

Up to NUMBERED_ABOVE runs, one line per run (colour: method family, marker:
composition, label: what differs between a method's runs). With more runs, one panel
per method family, a line per run coloured by its bits per element.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

from kvsim_figures import (NUMBERED_ABOVE, context_line, mark_zero_floor, mpl_text,
                           new_figure, placeholder, save_figure, use_log)
from kvsim_runstyle import (ALONE, RunStyle, family_runs, method_runs, run_styles,
                            style_handles, text_color)
from kvsim_tables import by_decode_step, lossy_mass_runs, pareto_frontier

Runs = dict[int, dict[str, pd.DataFrame]]
RUN_LINESTYLES = ["-", "--", ":", "-."]   # runs of one family on one axis
COMPOSED_LINESTYLES = ["--", ":", "-."]   # compositions in a family panel ("alone": solid)


def common_step_series(steps: pd.DataFrame, metric: str,
                       prompt_lens: dict[int, int] | None) -> tuple[pd.Series, int, bool]:
    """(mean of metric per step, number of steps left out, whether steps are decode
    steps t - P). Only the steps where every sequence of the run was measured are kept,
    so that every point averages the same sequences."""
    d = by_decode_step(steps, metric, prompt_lens)
    if d.empty:
        return pd.Series([], dtype=float), 0, False
    n_seq = int(steps["sequence"].nunique()) if "sequence" in steps else 1
    keep = (d["sequences"] == n_seq).to_numpy()
    return d["mean"][keep], int((~keep).sum()), d.index.name == "decode_step"


def _set_y_scale(ax: Any, values: np.ndarray) -> tuple[float, bool]:
    """Log scale when the positive values span more than LOG_DECADES; returns (the level
    at which exact zeros are drawn, is log)."""
    pos = values[np.isfinite(values) & (values > 0)]
    if use_log(values):
        floor = pos.min() / 10 ** 0.6
        ax.set_yscale("log")
        ax.set_ylim(floor / 10 ** 0.25, pos.max() * 10 ** 0.3)
        return float(floor), True
    ax.set_ylim(-0.04 * pos.max(), pos.max() * 1.08) if pos.size else ax.set_ylim(-0.05, 1.0)
    return 0.0, False


def _x_label(decode: bool) -> str:
    return ("decode step t − P (measured steps of every sequence; P = prompt length)"
            if decode else "query token position t (measured steps)")


def _composition_styles(styles: dict[int, RunStyle]) -> dict[str, str]:
    comps = sorted({s.composition for s in styles.values() if s.composition != ALONE})
    out = {ALONE: "-"}
    out.update({c: COMPOSED_LINESTYLES[i % len(COMPOSED_LINESTYLES)]
                for i, c in enumerate(comps)})
    return out


def _lines_one_axis(ax: Any, series: dict[int, pd.Series], styles: dict[int, RunStyle],
                    floor: float, log: bool) -> None:
    """One line per run: family colour, composition marker, a line style per run of the
    same family, its distinct label."""
    n_points = max(len(s) for s in series.values())
    used: dict[str, int] = {}
    for r, s in series.items():
        st = styles[r]
        k = used.get(st.family, 0)
        used[st.family] = k + 1
        values = s.to_numpy()
        zero = values == 0
        label = st.label
        if zero.all():
            label += " (0 at every step)"
        elif zero.any() and log:
            label += " (zeros drawn at bottom)"
        ax.plot(s.index.to_numpy(), np.where(zero, floor, values), label=mpl_text(label),
                color=st.color, ls=RUN_LINESTYLES[k % len(RUN_LINESTYLES)], lw=1.5,
                marker=st.marker if n_points <= 40 else None, markersize=4, gid=f"run {r}")


PANEL_LEGEND_UP_TO = 6   # a family panel with at most this many runs names each line


def _family_panels(fig: Figure | SubFigure, series: dict[int, pd.Series],
                   styles: dict[int, RunStyle], bits: dict[int, float], y_label: str,
                   decode: bool) -> list[Any]:
    """One panel per method family, a line per run coloured by bits per element
    (shared scale, colour bar). A panel of at most PANEL_LEGEND_UP_TO runs names its
    lines (a line style each); a bigger one draws compositions dashed. Families whose
    runs are 0 at every step get no panel: a line under the panels names them.
    Returns the panels."""
    families = family_runs({r: styles[r] for r in series})
    zero = {f: m for f, m in families.items()
            if all((series[r].to_numpy() == 0).all() for r in m)}
    families = {f: m for f, m in families.items() if f not in zero} or zero
    n = len(families)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    drawn = [r for m in families.values() for r in m]
    b = np.array([bits.get(r, np.nan) for r in drawn], dtype=float)
    b = b[np.isfinite(b)]
    lo, hi = (float(b.min()), float(b.max())) if b.size else (0.0, 16.0)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    cmap = matplotlib.colormaps["viridis"]
    all_values = np.concatenate([series[r].to_numpy() for r in drawn])
    floor, log = _set_y_scale(axes[0][0], all_values)
    linestyles = _composition_styles(styles)
    panels = []
    for k, (family, members) in enumerate(families.items()):
        ax = axes[k // ncols][k % ncols]
        panels.append(ax)
        named = len(members) <= PANEL_LEGEND_UP_TO
        for j, r in enumerate(members):
            values = series[r].to_numpy()
            color = cmap(norm(bits[r])) if np.isfinite(bits.get(r, np.nan)) else "gray"
            ls = (RUN_LINESTYLES[j % len(RUN_LINESTYLES)] if named
                  else linestyles[styles[r].composition])
            ax.plot(series[r].index.to_numpy(), np.where(values == 0, floor, values),
                    color=color, ls=ls, lw=1.2 if named else 1.0, gid=f"run {r}",
                    label=mpl_text(styles[r].label) if named else f"_run {r}")
        ax.set_title(f"{family} ({len(members)} run{'s' if len(members) > 1 else ''})",
                     fontsize=9, color=text_color(styles[members[0]].color))
        ax.grid(True, alpha=0.3)
        comps = sorted({styles[r].composition for r in members}, key=lambda c: (c != ALONE, c))
        if named:
            ax.legend(fontsize=6, loc="best", framealpha=0.8)
        elif len(comps) > 1:
            ax.legend(handles=[Line2D([], [], color="black", ls=linestyles[c], lw=1.1,
                                      label=c) for c in comps], fontsize=6, loc="best")
        if k % ncols == 0:
            ax.set_ylabel(y_label, fontsize=8)
        if k + ncols >= n:
            ax.xaxis.set_tick_params(labelbottom=True)
        if log and (all_values == 0).any() and k % ncols == 0:
            pos = all_values[all_values > 0]
            mark_zero_floor(ax, floor, float(pos.min()))
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9)
    bar.set_label("bits per cached element (line colour)", fontsize=9)
    x_label = _x_label(decode)
    if zero and families is not zero:
        names = ", ".join(styles[r].label for m in zero.values() for r in m)
        x_label += f"\nNo panel: 0 at every step: {names}"
    fig.supxlabel(mpl_text(x_label), fontsize=9)
    return panels


def _step_series(table: pd.DataFrame, runs: Runs, metric: str, order: list[int],
                 prompt_lens: dict[int, int] | None, transform: Any = None
                 ) -> tuple[dict[int, pd.Series], list[str], bool]:
    """{run: per-step series} of the runs in order that have step rows, notes, decode."""
    labels = {r: s.label for r, s in run_styles(table).items()}
    series: dict[int, pd.Series] = {}
    notes: list[str] = []
    left_out: dict[int, int] = {}
    decode = False
    for r in order:
        run = runs.get(r)
        steps = run["steps"] if run is not None else pd.DataFrame()
        s, dropped, decode_r = common_step_series(steps, metric, prompt_lens)
        if s.empty:
            notes.append(f"Run {r} ({labels[r]}) has no step rows; not drawn per step.")
            continue
        series[r] = transform(s) if transform else s
        decode = decode or decode_r
        if dropped:
            left_out[r] = dropped
    if left_out:
        most = max(left_out.values())
        notes.append(f"Per-step plots leave out the steps not measured in every sequence of "
                     f"a run (up to {most} per run: the last steps of the longer sequences), "
                     "so that every point averages the same sequences.")
    return series, notes, decode


def plot_error_vs_step(table: pd.DataFrame, runs: Runs, path: str,
                       attrs: dict[str, Any] | None = None,
                       prompt_lens: dict[int, int] | None = None) -> list[str]:
    """Write error_vs_step.png: mean relative error per decode step t - P (with
    prompt_lens, from /sequences; the query position t without); returns notes."""
    attrs = attrs or {}
    order = [int(r) for r in table["run"]]
    styles = run_styles(table) if order else {}
    series, notes, decode = _step_series(table, runs, "rel_err", order, prompt_lens)
    context = context_line(attrs)
    title = ("Relative error per decode step" if decode else "Relative error per measured step")
    title += "\n" + context if context else ""
    y_label = "attention-output relative error\n(mean over sequences, layers, heads)"
    if not series:
        fig = new_figure(7.0, 4.0)
        placeholder(fig, "no per-step data in the results file")
        save_figure(fig, path)
        return notes
    values = np.concatenate([s.to_numpy() for s in series.values()])
    if len(order) > NUMBERED_ABOVE:
        families = len(family_runs({r: styles[r] for r in series}))
        ncols, nrows = min(4, families), math.ceil(families / 4)
        fig = new_figure(3.9 * ncols + 1.8, 2.7 * nrows + 1.4)
        _family_panels(fig, series, styles, _bits(table), "relative error", decode)
        fig.suptitle(title.replace("\n", " (a panel per method family)\n", 1)
                     if context else title + " (a panel per method family)", fontsize=11)
        save_figure(fig, path)
        return notes
    longest = max(len(styles[r].label) for r in series) + 20
    fig = new_figure(7.0 + 0.6 + 0.062 * longest, 5.5)
    ax = fig.add_subplot()
    floor, log = _set_y_scale(ax, values)
    _lines_one_axis(ax, series, styles, floor, log)
    pos = values[np.isfinite(values) & (values > 0)]
    if log and (values == 0).any():
        mark_zero_floor(ax, floor, float(pos.min()))
    if pos.size == 0:
        ax.text(0.5, 0.5, "every run has attention-output error exactly 0",
                transform=ax.transAxes, ha="center", va="center", fontsize=10, color="gray")
    ax.set_xlabel(_x_label(decode))
    ax.set_ylabel(y_label + (" [log scale]" if log else ""))
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              title="run (colour: method family)", title_fontsize=8)
    save_figure(fig, path)
    return notes


def _bits(table: pd.DataFrame) -> dict[int, float]:
    return {int(r): float(b) for r, b in zip(table["run"],
                                             pd.to_numeric(table["bits_per_element"],
                                                           errors="coerce"))}


def plot_mass_lost(table: pd.DataFrame, runs: Runs, path: str,
                   attrs: dict[str, Any] | None = None,
                   prompt_lens: dict[int, int] | None = None) -> list[str]:
    """Write mass_lost.png: for every run that loses attention mass (eviction), the mean
    mass lost (1 - mass retained) per run and per decode step."""
    attrs = attrs or {}
    lossy = lossy_mass_runs(table)
    if not lossy:
        fig = new_figure(7, 3)
        placeholder(fig, "no run loses attention mass\n(no eviction: mass retained is 1)")
        save_figure(fig, path)
        return ["No run loses attention mass (mass_lost.png is a placeholder)."]
    styles = run_styles(table)
    sub = table[table["run"].astype(int).isin(lossy)]
    lost = dict(zip(sub["run"].astype(int),
                    1.0 - sub["mass_retained_mean"].astype(float).to_numpy()))
    series, notes, decode = _step_series(table, runs, "mass_retained", lossy, prompt_lens,
                                         transform=lambda s: 1.0 - s)
    notes = [n for n in notes if "no step rows" not in n]
    context = context_line(attrs)
    title = "Exact attention mass on evicted tokens" + ("\n" + context if context else "")
    y_label = "attention mass lost (mean over\nsequences, layers, heads)"
    if len(lossy) > NUMBERED_ABOVE:
        families = max(1, len(family_runs({r: styles[r] for r in series})))
        ncols, nrows = min(4, families), math.ceil(families / 4)
        fig = new_figure(5.5 + 3.9 * ncols + 1.8, max(5.0, 2.7 * nrows + 1.4))
        left, right = fig.subfigures(1, 2, width_ratios=[5.5, 3.9 * ncols + 1.8])
        _mass_vs_bits(left.add_subplot(), lossy, lost, _bits(table), styles)
        if series:
            _family_panels(right, series, styles, _bits(table), "attention mass lost", decode)
            right.suptitle("Per decode step, a panel per method family", fontsize=10)
        fig.suptitle(title, fontsize=11)
        save_figure(fig, path)
        return notes
    labels = {r: styles[r].label for r in lossy}
    longest = max(len(labels[r]) for r in lossy)
    fig = new_figure(12.5 + 0.06 * longest, max(4.2, 1.6 + 0.28 * len(lossy)))
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.5])
    y = np.arange(len(lossy))
    values = np.array([lost[r] for r in lossy])
    ax1.barh(y, values, color=[styles[r].color for r in lossy], edgecolor="black",
             linewidth=0.5)
    ax1.set_yticks(y, [mpl_text(labels[r]) for r in lossy], fontsize=8)
    ax1.invert_yaxis()
    for yi, v in zip(y, values):
        ax1.text(v, yi, f" {v:.3g}", va="center", fontsize=7)
    ax1.set_xlim(0, max(float(values.max()) * 1.25, 1e-3))
    ax1.set_xlabel("attention mass lost, 1 − mass retained\n(mean over measured steps)")
    ax1.set_title("Per run", fontsize=10)
    ax1.grid(True, axis="x", alpha=0.3)
    if series:
        _lines_one_axis(ax2, series, styles, 0.0, False)
        ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
                   title="run (colour: method family)", title_fontsize=8)
    ax2.set_xlabel(_x_label(decode))
    ax2.set_ylabel(y_label)
    ax2.set_title("Per measured step", fontsize=10)
    ax2.set_ylim(bottom=0)
    ax2.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    save_figure(fig, path)
    return notes


def _mass_vs_bits(ax: Any, lossy: list[int], lost: dict[int, float],
                  bits: dict[int, float], styles: dict[int, RunStyle]) -> None:
    """Mass lost against bits per element: a point per run (family colour, composition
    marker), a line per method through its own Pareto-optimal runs (x sorted)."""
    for method, members in method_runs({r: styles[r] for r in lossy}).items():
        pts = pd.DataFrame([(bits[r], lost[r]) for r in members if np.isfinite(bits[r])],
                           columns=["bits", "lost"])
        if len(pts) > 1:
            own = pareto_frontier(pts, "bits", "lost")
            ax.plot(own["bits"], own["lost"], color=styles[members[0]].color,
                    lw=1.0, alpha=0.8, ls="-" if styles[members[0]].composition == ALONE
                    else "--", gid=f"method {method}")
        for r in members:
            ax.scatter([bits[r]], [lost[r]], marker=styles[r].marker, color=styles[r].color,
                       edgecolors="black", linewidths=0.4, s=30, zorder=3, gid=f"run {r}")
    ax.set_xlabel("bits per cached element (fp16 = 16)")
    ax.set_ylabel("attention mass lost, 1 − mass retained\n(mean over measured steps)")
    ax.set_title("Per run (line: a method's best runs over its grid)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=style_handles(styles, lossy, with_lines=True), fontsize=7, loc="best",
              framealpha=0.9)
