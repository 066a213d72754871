#!/usr/bin/env python3
"""Turn a kvsim results file (docs/results-format.md, version 1) into a report folder.

Usage:
    python3 analysis/kvsim_report.py results.h5 --out report_dir [--quiet]

Writes into report_dir (created if needed; existing report files are replaced):
    summary.csv        one row per run, sorted by memory ratio (full precision)
    summary.md         the same as a Markdown table (4 significant digits)
    pareto.png         attention-output error vs bits per cached element, Pareto frontier
    error_vs_step.png  mean relative error per decode step t - P, one line per run
                       (a panel per method family beyond 12 runs)
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

This file is the command-line entry point and the report writer (write_report, main).
The rest lives in modules next to it, and their public names are re-exported here:
    kvsim_results.py   loading: load_results, Results, read_table, column lists
    kvsim_tables.py    tables: summary_table, pareto_frontier, error_by_step,
                       error_by_layer, error_by_head, memory_by_layer, memory_by_head,
                       mass_lost_by_step, lossy_mass_runs, layer_table, markdown_table
    kvsim_figures.py   figure and file helpers: labels, colours, atomic writes
    kvsim_plots.py     the figures: plot_pareto, plot_error_vs_step, plot_mass_lost,
                       plot_per_layer, plot_layer_memory, plot_per_head_error,
                       plot_per_head_memory
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kvsim_figures import (LOG_DECADES, MAX_LABEL_CHARS, NUMBERED_ABOVE, X_LABEL,  # noqa: E402
                           Y_LABEL, atomic_write, numbered, run_colors, run_labels, shorten,
                           write_text)
from kvsim_plots import (MAX_HEAD_PANELS, plot_error_vs_step, plot_layer_memory,  # noqa: E402
                         plot_mass_lost, plot_pareto, plot_per_head_error,
                         plot_per_head_memory, plot_per_layer)
from kvsim_results import (AGGREGATES_COLUMNS, COUNTERS_COLUMNS, FORMAT_NAME,  # noqa: E402
                           FORMAT_VERSION, KV_COLUMNS, RUN_TABLES, STEPS_COLUMNS,
                           SUMMARY_COLUMNS, Results, column_order, load_results, read_table)
from kvsim_tables import (REPORT_COLUMNS, error_by_head, error_by_layer,  # noqa: E402
                          error_by_step, format_number, layer_table, lossy_mass_runs,
                          markdown_table, mass_lost_by_step, memory_by_head, memory_by_layer,
                          pareto_frontier, summary_table)

__all__ = [  # the modules' names re-exported here, then this module's own
    "LOG_DECADES", "MAX_LABEL_CHARS", "NUMBERED_ABOVE", "X_LABEL", "Y_LABEL",
    "atomic_write", "numbered", "run_colors", "run_labels", "shorten", "write_text",
    "MAX_HEAD_PANELS", "plot_error_vs_step", "plot_layer_memory", "plot_mass_lost",
    "plot_pareto", "plot_per_head_error", "plot_per_head_memory", "plot_per_layer",
    "AGGREGATES_COLUMNS", "COUNTERS_COLUMNS", "FORMAT_NAME", "FORMAT_VERSION",
    "KV_COLUMNS", "RUN_TABLES", "STEPS_COLUMNS", "SUMMARY_COLUMNS", "Results",
    "column_order", "load_results", "read_table", "REPORT_COLUMNS", "error_by_head",
    "error_by_layer", "error_by_step", "format_number", "layer_table",
    "lossy_mass_runs", "markdown_table", "mass_lost_by_step", "memory_by_head",
    "memory_by_layer", "pareto_frontier", "summary_table", "REPORT_FILES",
    "write_report", "main",
]

# The report's files, in the order index.md lists them.
REPORT_FILES = ("summary.csv", "summary.md", "pareto.png", "error_vs_step.png",
                "per_layer.png", "memory_per_layer.png", "per_head_error.png",
                "per_head_memory.png", "mass_lost.png", "per_layer.csv", "index.md")


def _index_markdown(results: Results, table: pd.DataFrame, front: pd.DataFrame,
                    notes: list[str], source: str) -> str:
    """index.md: the file's context, links to every report file, the summary table,
    the Pareto-optimal runs, the figures and the notes."""
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
              "- [error_vs_step.png](error_vs_step.png): mean relative error per decode step t − P",
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


def _check_complete(results: Results) -> None:
    """Raise ValueError, before anything is written, when /summary lists runs but none
    has a /runs group: every figure and per-layer table would be empty while the summary
    looks complete. (Some runs missing is noted in index.md instead.)"""
    listed = set(int(r) for r in results.summary["run"])
    if listed and not listed & set(results.runs):
        raise ValueError(f"{results.path}: /summary lists {len(listed)} run(s) but no /runs "
                         "group holds any of them: the file is incomplete, no report written")


def write_report(results: Results | str | os.PathLike, out_dir: str | os.PathLike,
                 quiet: bool = True) -> dict[str, str]:
    """Write the report folder; returns {name: path} of the files written."""
    if not isinstance(results, Results):
        results = load_results(results)
    _check_complete(results)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in REPORT_FILES}

    table = summary_table(results)
    md = markdown_table(table)
    atomic_write(paths["summary.csv"], lambda tmp: table.to_csv(tmp, index=False))
    write_text(paths["summary.md"], md)
    if not quiet:
        sys.stdout.write(md)
        sys.stdout.flush()

    notes: list[str] = []
    notes += plot_pareto(table, paths["pareto.png"], results.attrs)
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
    notes += plot_error_vs_step(table, results.runs, paths["error_vs_step.png"],
                                results.attrs, prompt_lens)
    notes += plot_mass_lost(table, results.runs, paths["mass_lost.png"], results.attrs,
                            prompt_lens)
    layers = layer_table(table, results.runs)
    atomic_write(paths["per_layer.csv"], lambda tmp: layers.to_csv(tmp, index=False))
    missing = sorted(set(int(r) for r in table["run"]) - set(results.runs))
    if missing:
        notes.append("Runs listed in /summary without a /runs group: "
                     + ", ".join(str(r) for r in missing) + ".")
    front = pareto_frontier(table) if not table.empty else table
    index = _index_markdown(results, table, front, notes, os.path.basename(results.path))
    write_text(paths["index.md"], index)
    return paths


def main(argv: list[str] | None = None) -> int:
    """The command line: kvsim_report.py RESULTS --out DIR [--quiet]; returns the exit
    status (1 with a message on stderr when the file cannot be read as results)."""
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
