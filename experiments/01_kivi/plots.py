#!/usr/bin/env python3
"""Plots and tables of experiment 01 (KIVI): plots.py RESULTS_DIR FIGURES_DIR."""
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))
import kvsim_analysis as ka  # noqa: E402

res, figs = sys.argv[1], sys.argv[2]
MODELS = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
data = {m: ka.load_summary(os.path.join(res, f"{m}.h5"), MODELS[m]) for m in MODELS
        if os.path.exists(os.path.join(res, f"{m}.h5"))}
cols = ["spec", "bits_per_element", "key_err_mean", "value_err_mean", "rel_err_mean", "rel_err_p95"]
lines = []
for m, s in data.items():
    lines += [f"### {MODELS[m]}", "", "| spec | bits/elem | key err | value err | rel err mean | rel err p95 |",
              "|---|---:|---:|---:|---:|---:|"]
    for _, r in s.iterrows():
        lines.append("| `{}` | {:.3f} | {:.4f} | {:.4f} | {:.4f} | {:.4f} |".format(*[r[c] for c in cols]))
    lines.append("")
open(os.path.join(figs, "..", "tables.md"), "w").write("\n".join(lines))

# Figure 1: key error per method at 2 and 4 bits.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
methods = [("uniform k_axis=token", lambda s, b: s[(s["stages"] == "uniform") & (s["uniform.bits"] == b) & (s["uniform.k_axis"] == "token")]),
           ("uniform k_axis=channel\n(no fp16 residual)", lambda s, b: s[(s["stages"] == "uniform") & (s["uniform.bits"] == b) & (s["uniform.k_axis"] == "channel")]),
           ("kivi G=32 R=128", lambda s, b: s[(s["stages"] == "kivi") & (s["kivi.bits"] == b) & (s["kivi.group"] == 32) & (s["kivi.residual"] == 128)])]
width = 0.38
for ax, metric, title in ((axes[0], "key_err_mean", "Key reconstruction error"),
                          (axes[1], "rel_err_mean", "Attention-output error")):
    for k, (m, s) in enumerate(data.items()):
        xs, ys, labels = [], [], []
        for b in (2, 4):
            for j, (name, sel) in enumerate(methods):
                row = sel(s, b)
                xs.append((0 if b == 2 else 4) + j + (k - 0.5) * width)
                ys.append(float(row[metric].iloc[0]) if len(row) else float("nan"))
        ax.bar(xs, ys, width=width, label=MODELS[m], color=("tab:blue", "tab:orange")[k], edgecolor="black", lw=0.4)
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:.3f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ticks = [0, 1, 2, 4, 5, 6]
    ax.set_xticks(ticks, [n.split("\n")[0] for n, _ in methods] * 2, rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.8)
    ax.set_ylabel(("‖K̂−K‖/‖K‖ (mean)" if metric == "key_err_mean" else "‖ô−o‖/‖o‖ (mean over decode steps)"))
    ax.set_title(title + " — left: 2 bits, right: 4 bits", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=8)
fig.suptitle("KIVI per-channel keys vs per-token keys (values per token, group 32); teacher-forced replay", fontsize=10)
fig.savefig(os.path.join(figs, "key_axis.png"), dpi=90)

# Figure 2: effect of G (R=128) and R (G=32) at 2 bits.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
for k, (m, s) in enumerate(data.items()):
    kv = s[(s["stages"] == "kivi") & (s["kivi.bits"] == 2)]
    g = kv[kv["kivi.residual"] == 128].sort_values("kivi.group")
    r = kv[kv["kivi.group"] == 32].sort_values("kivi.residual")
    for ax, d, x, xl in ((axes[0], g, "kivi.group", "group size G (tokens per key group / channels per value group), R = 128"),
                         (axes[1], r, "kivi.residual", "residual length R (fp16 recent tokens), G = 32")):
        c = ("tab:blue", "tab:orange")[k]
        ax.plot(d[x], d["rel_err_mean"], "o-", color=c, label=f"{MODELS[m]}: attention-output rel err")
        ax.plot(d[x], d["key_err_mean"], "s--", color=c, label=f"{MODELS[m]}: key rel err", alpha=0.7)
        for xx, yy, bb in zip(d[x], d["rel_err_mean"], d["bits_per_element"]):
            ax.annotate(f"{bb:.2f}b", (xx, yy), xytext=(3, 4), textcoords="offset points", fontsize=7, color=c)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel("mean relative error")
        ax.grid(True, alpha=0.3)
axes[0].set_title("KIVI-2: effect of G (labels: bits/element)", fontsize=10)
axes[1].set_title("KIVI-2: effect of R (labels: bits/element)", fontsize=10)
axes[1].legend(fontsize=7)
fig.savefig(os.path.join(figs, "group_residual.png"), dpi=90)
print(open(os.path.join(figs, "..", "tables.md")).read())
