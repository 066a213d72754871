#!/usr/bin/env python3
"""Experiment 05 (MiKV vs H2O vs l2norm at equal memory): plots.py RESULTS_DIR FIGURES_DIR [TRACES]."""
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))
import kvsim_analysis as ka  # noqa: E402

res, figs = sys.argv[1], sys.argv[2]
MODELS = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
STY = {"h2o": ("tab:orange", "o", "H2O (heavy = recent)"), "l2norm": ("tab:green", "s", "l2norm (skip=[])"),
       "mikv": ("tab:purple", "^", "MiKV (fp16 important + INT-lo)")}
out = ["| model | spec | memory ratio | rel err mean | rel err p95 | mass lost |", "|---|---|---:|---:|---:|---:|"]
interp = []
fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), constrained_layout=True)
for ax, m in zip(axes, MODELS):
    p = os.path.join(res, f"{m}_policies.h5")
    if not os.path.exists(p):
        continue
    s = ka.load_summary(p)
    for _, r in s.sort_values("memory_ratio").iterrows():
        out.append(f"| {MODELS[m]} | `{r['spec']}` | {r['memory_ratio']:.3f} | {r['rel_err_mean']:.4f} | {r['rel_err_p95']:.4f} | {r['mass_lost_mean']:.3f} |")
    for name, (c, mk, lab) in STY.items():
        d = s[s["stages"] == name].sort_values("memory_ratio")
        if name == "mikv":
            main = d[d["mikv.hi_bits"].isna() & d["mikv.importance"].isna()]
            for lb, mk2 in ((1, "v"), (2, "^"), (3, "P")):
                g = main[main["mikv.lo_bits"] == lb]
                ax.plot(g["memory_ratio"], g["rel_err_mean"], marker=mk2, color=c, ls="-" if lb == 2 else "none",
                        lw=1, label=f"MiKV fp16 important + INT{lb} rest (heavy = recent = 1–10%)")
            other = d.drop(main.index)
            ax.scatter(other["memory_ratio"], other["rel_err_mean"], marker="o", facecolors="none", edgecolors=c,
                       label="MiKV INT2 variants (hi_bits=8 / importance=l2norm)")
            curve = ka.pareto_frontier(main, "memory_ratio", "rel_err_mean")
        else:
            ax.plot(d["memory_ratio"], d["rel_err_mean"], marker=mk, color=c, label=lab)
            curve = d
        for target in (0.1, 0.2, 0.3, 0.5):
            interp.append(f"- {MODELS[m]} {name} at memory {target:.0%}: rel err {ka.interpolate_at(curve, 'memory_ratio', 'rel_err_mean', target):.4f}")
    ax.axvspan(0.1, 0.5, color="gray", alpha=0.08, label="10%–50% of fp16")
    ax.set_xlabel("memory ratio vs fp16 (achieved, incl. metadata)")
    ax.set_ylabel("attention-output rel err (mean)")
    ax.set_yscale("log")
    ax.set_title(MODELS[m], fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.suptitle("MiKV vs H2O vs l2norm at equal memory (teacher-forced replay; lower is better)", fontsize=10)
fig.savefig(os.path.join(figs, "equal_memory.png"), dpi=90)
open(os.path.join(figs, "..", "tables.md"), "w").write("\n".join(out) + "\n\n" + "\n".join(interp) + "\n")
print("\n".join(interp))
