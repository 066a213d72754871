"""Tables of the kvsim report, computed from loaded results (kvsim_results.Results).

    summary_table      the report's /summary (sorted by memory ratio)
    pareto_frontier    the runs no other run beats on both bits and error
    error_by_step, error_by_layer, error_by_head, memory_by_layer, memory_by_head,
    mass_lost_by_step, by_decode_step
                       per-step / per-layer / per-head statistics of one run
    lossy_mass_runs    the runs that lose attention mass (evict something)
    layer_table        per_layer.csv: one row per (run, layer)
    format_number, markdown_table   summary.md
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from kvsim_results import SUMMARY_COLUMNS, Results

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


def summary_table(results_or_summary: Results | pd.DataFrame) -> pd.DataFrame:
    """The report's summary: the report columns first, then the other version-1 /summary
    columns in schema order, then every other column in the loaded (file) order.

    Rows sorted by memory ratio (ties by run index; NaN last). Values are unchanged.
    """
    loaded = (results_or_summary.summary if isinstance(results_or_summary, Results)
              else results_or_summary)
    s = loaded.sort_values(["memory_ratio", "run"], kind="mergesort", na_position="last")
    first = [c for c, _ in REPORT_COLUMNS if c in s.columns]
    first += [c for c in SUMMARY_COLUMNS if c in s.columns and c not in first]
    table = s[first + [c for c in s.columns if c not in first]].reset_index(drop=True)
    table.attrs = dict(loaded.attrs)  # units, docs, labels (read_table)
    return table


def report_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, header) of the report's Markdown table: REPORT_COLUMNS, then every other
    column the file labels for the CLI table (table.attrs["labels"], schema order), so a
    metric added to the schema with a label shows up here too."""
    cols = [(c, h) for c, h in REPORT_COLUMNS if c in table.columns]
    shown = {c for c, _ in cols}
    labels = table.attrs.get("labels", {})
    cols += [(c, labels[c]) for c in table.columns if c in labels and c not in shown]
    return cols
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
    """The report columns (report_columns()) of a summary_table() as a GitHub Markdown
    table."""
    cols = report_columns(table)
    numeric = [c != "spec" for c, _ in cols]
    lines = ["| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for _, row in table.iterrows():
        cells = [_md_cell(str(row[c])) if c == "spec" else format_number(row[c])
                 for c, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"



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


def by_decode_step(steps: pd.DataFrame, metric: str = "rel_err",
                   prompt_lens: dict[int, int] | None = None) -> pd.DataFrame:
    """Mean of `metric` per step over sequences, layers and heads, and how many sequences
    were measured there: columns `mean` and `sequences`, indexed by step.

    With prompt_lens ({sequence: prompt length P}, from /sequences, covering every
    sequence of the table) the index is the decode step t - P, so that sequences of
    different prompt lengths line up; otherwise the query position t. The index name
    says which ("decode_step" or "step")."""
    if steps.empty or metric not in steps or "step" not in steps:
        return pd.DataFrame({"mean": pd.Series([], dtype=float),
                             "sequences": pd.Series([], dtype=np.int64)})
    step = steps["step"].astype(np.int64)
    name = "step"
    if prompt_lens and "sequence" in steps:
        p = steps["sequence"].astype(np.int64).map(prompt_lens)
        if p.notna().all():
            step = step - p.astype(np.int64)
            name = "decode_step"
    seq = (steps["sequence"].astype(np.int64) if "sequence" in steps
           else pd.Series(0, index=steps.index))
    frame = pd.DataFrame({name: step, "v": steps[metric].astype(np.float64), "seq": seq})
    g = frame.groupby(name)
    return pd.DataFrame({"mean": g["v"].mean(), "sequences": g["seq"].nunique()}).sort_index()


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

