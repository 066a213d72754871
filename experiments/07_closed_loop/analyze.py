#!/usr/bin/env python3
"""Experiment 07 (closed loop vs replay): the tables and figures of the study.

    analyze.py --results DIR --figures DIR [--tables DIR] [--models smollm2 gemma3-270m] [--boot N]
    analyze.py --live-specs GRID      (the grid's specs that can run live, one a line)

Reads DIR/replay_<model>.h5 (`kvsim sweep`), DIR/closed_<model>.part*.h5 (`python -m kvsim.live`)
and DIR/traces/<model>.h5; writes <tables>/tables.md, <tables>/correlations.csv,
<tables>/per_config.csv and the scatter plots into --figures. --tables defaults to the
figures folder's parent (the experiment folder).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import h5py
import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))
import closed_loop_study as cls  # noqa: E402
import kvsim_results as kr  # noqa: E402
import kvsim_tables as kt  # noqa: E402

MODEL_NAMES = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
FAMILY_STYLE = {"evict": ("tab:orange", "o"), "quantize": ("tab:blue", "s"), "merge": ("tab:green", "D"),
                "composition": ("tab:purple", "^")}
# the metrics of the scatter plots (x) against delta_nll (y)
SCATTER_METRICS = ("rel_err_mean", "mass_lost", "one_minus_cosine", "combined_model_out")


def load_replay(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (spec, sequence) replay metrics and replay seconds of one model's sweep file."""
    import kvsim  # the installed package (docs/python.md)
    res = kvsim.load_results(path)
    per_seq = cls.replay_per_sequence(res.summary, res.steps, res.kv)
    with h5py.File(path, "r") as f:
        units = kr.read_table(f["sweep/units"])
        configs = kr.read_table(f["sweep/configs"])
        ranks = kr.read_table(f["sweep/ranks"])
    sec = units.groupby(["config", "sequence"])["seconds"].sum().rename("replay_seconds").reset_index()
    sec["spec"] = sec["config"].map(configs.set_index("config")["spec"])
    # the blocks' shared work (trace reads, exact attention, shared prefill attention) spread
    # evenly over the (config, sequence) pairs
    overhead = float(ranks[["validate_seconds", "io_seconds", "exact_seconds"]].to_numpy().sum())
    sec["replay_overhead_seconds"] = overhead / max(len(sec), 1)
    return per_seq, sec.drop(columns="config")


def load_closed(results: str, model: str) -> pd.DataFrame:
    """The /closed_loop rows of one model: every shard run.sh wrote (closed_<model>.part<k>.h5)."""
    import kvsim.live  # the live mode (docs/closed-loop.md)
    paths = sorted(glob.glob(os.path.join(results, f"closed_{model}.part*.h5")))
    if not paths:
        return pd.DataFrame()
    rows = pd.concat([kvsim.live.load_closed_loop(p) for p in paths], ignore_index=True)
    # every shard runs `full` (the reference) itself: the same rows, kept once
    return rows.drop_duplicates(subset=["run", "sequence"], keep="first").reset_index(drop=True)


def frame_md(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (numbers as kvsim_tables.format_number)."""
    num = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "|".join("---:" if n else "---" for n in num) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(kt.format_number(v) if n else kt._md_cell(str(v))
                                       for v, n in zip(row, num)) + " |")
    return "\n".join(lines)


def fmt_ci(v: float, lo: float, hi: float) -> str:
    return "n/a" if v != v else f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def correlation_md(table: pd.DataFrame, scope: str, stat: str, outcomes: list[str]) -> list[str]:
    t = table[(table["scope"] == scope) & (table["family"] == "all")]
    lines = ["| replay metric | " + " | ".join(outcomes) + " |", "|---|" + "---:|" * len(outcomes)]
    for metric in t["metric"].unique():
        cells = []
        for o in outcomes:
            r = t[(t["metric"] == metric) & (t["outcome"] == o)]
            cells.append("n/a" if r.empty else fmt_ci(r[stat].iloc[0], r[stat + "_lo"].iloc[0], r[stat + "_hi"].iloc[0]))
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    return lines


def within_family_md(table: pd.DataFrame, outcome: str) -> list[str]:
    t = table[(table["outcome"] == outcome) & (table["family"] != "all")]
    fams = sorted(t["family"].unique())
    scopes = list(t["scope"].unique())
    lines = ["| replay metric | scope | " + " | ".join(f"{f} (n)" for f in fams) + " |",
             "|---|---|" + "---:|" * len(fams)]
    for metric in t["metric"].unique():
        for scope in scopes:
            cells = []
            for f in fams:
                r = t[(t["metric"] == metric) & (t["scope"] == scope) & (t["family"] == f)]
                cells.append("n/a" if r.empty or r["spearman"].iloc[0] != r["spearman"].iloc[0]
                             else f"{r['spearman'].iloc[0]:+.2f} ({r['configs'].iloc[0]})")
            lines.append(f"| `{metric}` | {scope} | " + " | ".join(cells) + " |")
    return lines


def scatter(cfg: pd.DataFrame, models: list[str], path: str, outcome: str = "delta_nll") -> None:
    metrics = [m for m in SCATTER_METRICS if m in cfg.columns and cfg[m].notna().any()]
    if "combined_model_out" not in metrics and cfg["combined_family_out"].notna().any():
        metrics.append("combined_family_out")  # one model only: the family-out fit
    fig, axes = plt.subplots(len(models), len(metrics), figsize=(3.1 * len(metrics), 2.7 * len(models)),
                             squeeze=False, constrained_layout=True)
    for i, model in enumerate(models):
        d = cfg[(cfg["model"] == model) & cfg["family"].isin(list(FAMILY_STYLE))]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for fam, (color, marker) in FAMILY_STYLE.items():
                e = d[d["family"] == fam]
                if e.empty:
                    continue
                ax.scatter(e[metric], e[outcome], c=color, marker=marker, s=18, label=fam if i == j == 0 else None)
            live = d.dropna(subset=[metric, outcome])
            rho = cls.spearman(live[metric], live[outcome]) if len(live) > 2 else float("nan")
            ax.set_title(f"{MODEL_NAMES.get(model, model)}: rho {rho:+.2f}", fontsize=8)
            ax.set_xlabel(metric, fontsize=8)
            if not metric.startswith("combined"):
                ax.set_xscale("symlog", linthresh=1e-4)
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.tick_params(labelsize=6)
            ax.grid(True, alpha=0.3)
        axes[i][0].set_ylabel(f"closed loop {outcome}", fontsize=8)
    fig.legend(loc="outside lower center", ncol=5, fontsize=7)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def prompts_md(results: str, models: list[str], closed: dict[str, pd.DataFrame]) -> list[str]:
    lines = ["| model | sequence | kind | prompt tokens | answer | full: capture found it | full: live answer_correct |",
             "|---|---:|---|---:|---|---:|---:|"]
    for m in models:
        c = closed.get(m)
        with h5py.File(os.path.join(results, "traces", f"{m}.h5"), "r") as f:
            for name in f["sequences"]:
                s = int(name)
                if c is not None and s not in set(c["sequence"]):
                    continue
                a = f["sequences"][name].attrs
                live = "n/a"
                if c is not None:
                    r = c[(c["run"] == "full") & (c["sequence"] == s)]
                    live = "n/a" if r.empty else str(int(r["answer_correct"].iloc[0]))
                lines.append(f"| {MODEL_NAMES.get(m, m)} | {s} | {a['kind']} | {int(a['prompt_len'])} | "
                             f"{a['answer']} | {int(a['answer_found'])} | {live} |")
    return lines


def live_specs(grid: str) -> list[str]:
    """The specs of a sweep file (kvsim's parser, through kvsim.live) that can run live: all
    but the replay-only ones (the oracle reads the future), interleaved (`cls.interleave`) so
    that a run stopped part-way has covered every family and budget range."""
    import kvsim.live
    return cls.interleave([s for s in kvsim.live.sweep_specs(grid) if cls.family(s) != "reference"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--live-specs", metavar="GRID", help="print the live-runnable specs of GRID and exit")
    ap.add_argument("--results")
    ap.add_argument("--figures")
    ap.add_argument("--tables")
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    ap.add_argument("--boot", type=int, default=1000)
    a = ap.parse_args()
    if a.live_specs:
        print("\n".join(live_specs(a.live_specs)))
        return
    if not (a.results and a.figures):
        ap.error("--results and --figures are required")
    tables = a.tables or os.path.dirname(os.path.abspath(a.figures))
    replay, closed, seconds, notes = {}, {}, [], []
    for m in a.models:
        replay[m], sec = load_replay(os.path.join(a.results, f"replay_{m}.h5"))
        closed_raw = load_closed(a.results, m)
        if closed_raw.empty:
            print(f"analyze.py: {m}: no closed-loop rows yet: left out", file=sys.stderr)
            notes.append(f"{MODEL_NAMES.get(m, m)}: no closed-loop rows yet")
            del replay[m]
            continue
        per_seq = cls.closed_loop_per_sequence(closed_raw)
        complete = cls.complete_sequences(per_seq)
        if not complete:  # no prompt finished by every config yet: the first, with the configs done
            first = int(per_seq["sequence"].iloc[0])
            done = per_seq[per_seq["sequence"] == first]
            notes.append(f"{MODEL_NAMES.get(m, m)}: PARTIAL: only {done['spec'].nunique()} of "
                         f"{per_seq['spec'].nunique()} live specs finished on the first prompt")
            per_seq, complete = done, [first]
        dropped = sorted(set(per_seq["sequence"]) - set(complete))
        if dropped:  # a run still under way: only the sequences every config has finished
            print(f"analyze.py: {m}: sequences {dropped} not finished by every config: left out",
                  file=sys.stderr)
        notes.append(f"{MODEL_NAMES.get(m, m)}: {len(complete)} prompts finished by all "
                     f"{per_seq['spec'].nunique()} live specs (sequences {complete})"
                     + (f"; left out, unfinished: {dropped}" if dropped else ""))
        closed[m] = per_seq[per_seq["sequence"].isin(complete)]
        replay[m] = replay[m][replay[m]["sequence"].isin(complete)]
        sec = sec[sec["sequence"].isin(complete)]
        sec = sec.merge(closed[m][["spec", "sequence", "seconds"]].rename(columns={"seconds": "live_seconds"}),
                        on=["spec", "sequence"], how="left")
        sec.insert(0, "model", m)
        seconds.append(sec)
    models = [m for m in a.models if m in closed]
    if not models:
        raise SystemExit("analyze.py: no closed-loop results yet")
    rows = cls.heldout_combined(cls.join_study(replay, closed))
    cfg = cls.config_means(rows)
    cost = pd.concat(seconds).groupby(["model", "spec"], sort=False)[
        ["replay_seconds", "replay_overhead_seconds", "live_seconds"]].mean().reset_index()
    cfg = cfg.merge(cost, on=["model", "spec"], how="left")
    metrics = list(cls.REPLAY_METRICS) + ["combined_model_out", "combined_prompt_out", "combined_family_out"]
    outcomes = list(cls.OUTCOMES)
    table = cls.correlation_table(rows, metrics, outcomes, n_boot=a.boot, models=models)
    os.makedirs(tables, exist_ok=True)
    os.makedirs(a.figures, exist_ok=True)
    table.to_csv(os.path.join(tables, "correlations.csv"), index=False, float_format="%.4f")
    cfg.to_csv(os.path.join(tables, "per_config.csv"), index=False, float_format="%.6g")
    scatter(cfg, models, os.path.join(a.figures, "scatter_delta_nll.png"))
    scatter(cfg, models, os.path.join(a.figures, "scatter_kl.png"), outcome="kl_mean")

    pooled = "pooled" if len(models) > 1 else models[0]
    md = ["# Experiment 07: tables (generated by analyze.py)", "",
          "Correlations are over configurations (means over the prompts); intervals: 95 % percentile "
          f"bootstrap, {a.boot} replicates, each resampling the prompts (within a model) and then the "
          "configurations, with replacement. Every metric and outcome is oriented as damage (larger = "
          "worse), so a good predictor has a positive correlation.", ""] + [f"- {n}" for n in notes] + [
          "", "## Prompts", ""]
    md += prompts_md(a.results, models, {m: load_closed(a.results, m) for m in models})
    for scope in [pooled] + (models if len(models) > 1 else []):
        md += ["", f"## Spearman, all families ({scope})", ""] + correlation_md(table, scope, "spearman", outcomes)
        md += ["", f"## Kendall tau-b, all families ({scope})", ""] + correlation_md(table, scope, "kendall", outcomes)
        md += ["", f"## Across families: Kendall tau-b over pairs of configs of different families ({scope})", ""]
        md += correlation_md(table, scope, "cross_family_tau", outcomes)
    md += ["", "## Within each family: Spearman with delta_nll (configs)", ""] + within_family_md(table, "delta_nll")
    best = table[(table["scope"] == pooled) & (table["family"] == "all") & (table["outcome"] == "delta_nll")
                 & table["metric"].isin(list(cls.REPLAY_METRICS))].sort_values("spearman", ascending=False)
    best_metric = best["metric"].iloc[0]
    md += ["", f"Best single replay metric for delta_nll ({pooled}): `{best_metric}`, Spearman "
           f"{best['spearman'].iloc[0]:+.3f}.", "",
           f"## Largest disagreements: rank by `{best_metric}` vs rank by delta_nll", "",
           frame_md(cls.disagreements(cfg, best_metric, "delta_nll", k=6))]
    show = ["model", "spec", "family", "memory_ratio", "rel_err_mean", "mass_lost", "one_minus_cosine",
            "delta_nll", "kl_mean", "top1_miss_live", "accuracy_loss", "token_disagreement",
            "replay_seconds", "replay_overhead_seconds", "live_seconds"]
    md += ["", "## Per configuration (means over the prompts; seconds per sequence, one thread each)", "",
           frame_md(cfg[[c for c in show if c in cfg.columns]])]
    cost_all = cfg[~cfg["family"].isin(["reference"])]
    md += ["", "## Cost per configuration and sequence (same machine, same run.sh)", "",
           "| model | replay s (units) | replay s (+ shared block work) | closed loop s | ratio |",
           "|---|---:|---:|---:|---:|"]
    for m in models:
        d = cost_all[cost_all["model"] == m]
        r, ro, live = d["replay_seconds"].mean(), (d["replay_seconds"] + d["replay_overhead_seconds"]).mean(), d["live_seconds"].mean()
        md.append(f"| {MODEL_NAMES.get(m, m)} | {r:.3f} | {ro:.3f} | {live:.2f} | {live / ro:.1f}x |")
    with open(os.path.join(tables, "tables.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md[:60]))


if __name__ == "__main__":
    main()
