"""Figure and file helpers shared by the report's plots (kvsim_plots, kvsim_heatmaps)
and its writer (kvsim_report): run labels and colours, axis-scale choice, the context
line of titles, figure creation, placeholders, label placement, and atomic writes
(every file is written under a temporary name and renamed over its final name)."""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.text import Annotation
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation
from matplotlib.transforms import Bbox

X_LABEL = "bits per cached element (fp16 = 16)"
Y_LABEL = "attention-output relative error (mean over measured steps)"
LOG_DECADES = 2.0      # use a log axis when positive values span more than this
MAX_LABEL_CHARS = 32   # plot labels longer than this are shortened in the middle
NUMBERED_ABOVE = 12    # with more runs, points are labelled by run index plus a key


def shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """text, shortened in the middle with an ellipsis when longer than limit."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 3
    tail = limit - 1 - head
    return text[:head] + "…" + text[len(text) - tail:]


def mpl_text(text: str) -> str:
    """text with "$" escaped (a "$" would start matplotlib mathtext)."""
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
    """A distinct colour per run: tab10 up to 10 runs, tab20 up to 20, turbo beyond."""
    n = len(runs)
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return {r: cmap(i) for i, r in enumerate(runs)}
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return {r: cmap(i) for i, r in enumerate(runs)}
    cmap = matplotlib.colormaps["turbo"]
    return {r: cmap(0.05 + 0.9 * i / (n - 1)) for i, r in enumerate(runs)}


def use_log(values: np.ndarray) -> bool:
    """Whether the positive finite values span more than LOG_DECADES decades."""
    pos = values[np.isfinite(values) & (values > 0)]
    return pos.size >= 2 and math.log10(pos.max() / pos.min()) > LOG_DECADES


def context_line(attrs: dict[str, Any]) -> str:
    """The title line "model … · trace … · measured steps: …" from the file attributes."""
    parts = []
    if attrs.get("model_name"):
        parts.append(f"model {shorten(attrs['model_name'], 40)}")
    if attrs.get("trace_id"):
        parts.append(f"trace {shorten(attrs['trace_id'], 24)}")
    if attrs.get("measured_steps"):
        parts.append(f"measured steps: {shorten(attrs['measured_steps'], 20)}")
    return mpl_text(" · ".join(parts))


# --------------------------------------------------------------------------- files and figures


def atomic_write(path: str, write: Callable[[str], None]) -> None:
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


def write_text(path: str, text: str) -> None:
    """Write UTF-8 text (LF line ends) atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    atomic_write(path, write)


def save_figure(fig: Figure, path: str) -> None:
    """Save fig as a PNG (120 dpi, tight bounding box) atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                                bbox_inches="tight", pad_inches=0.15))


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure on an Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def placeholder(fig: Figure, message: str) -> None:
    """Fill fig with a centred message instead of a plot."""
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, wrap=True)



def mark_zero_floor(ax: Axes, floor: float, lowest_positive: float) -> None:
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


def place_labels(fig: Figure, ax: Axes, annotations: list[Annotation],
                 points: np.ndarray) -> None:
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

    def cost(box: Bbox) -> float:
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



def norm_for(values: np.ndarray, force_linear: bool = False
             ) -> tuple[Normalize, bool]:
    """(colour norm, is log) for a heatmap of values: LogNorm over the positive values
    when they span more than LOG_DECADES (and not force_linear), else linear from
    min(0, lowest) to the highest."""
    finite = values[np.isfinite(values)]
    pos = finite[finite > 0]
    if not force_linear and use_log(finite):
        return LogNorm(vmin=pos.min(), vmax=pos.max()), True
    hi = float(finite.max()) if finite.size else 1.0
    lo = float(min(0.0, finite.min())) if finite.size else 0.0
    return Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0), False

