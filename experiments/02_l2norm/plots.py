#!/usr/bin/env python3
"""Experiment 02 (L2-norm eviction): plots.py RESULTS_DIR FIGURES_DIR TRACES_DIR."""
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))
import kvsim_analysis as ka  # noqa: E402

res, figs, traces = sys.argv[1], sys.argv[2], sys.argv[3]
MODELS = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
out = []

# 1. Correlation of key norm with the attention the decode queries later give the token.
fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True, sharey=True)
corr_rows = []
for ax, m in zip(axes, MODELS):
    per_seq = []
    for seq in range(4):
        d = ka.key_norm_attention(os.path.join(traces, f"{m}_large.h5"), seq)
        a = ka.norm_attention_correlation(d, skip_first=4).assign(seq=seq, sinks="excluded")
        b = ka.norm_attention_correlation(d, skip_first=0).assign(seq=seq, sinks="included")
        per_seq += [a, b]
    c = pd.concat(per_seq).groupby(["sinks", "layer"])[["pearson", "spearman"]].mean().reset_index()
    c["model"] = MODELS[m]
    corr_rows.append(c)
    for sinks, ls in (("excluded", "-"), ("included", ":")):
        cc = c[c["sinks"] == sinks]
        ax.plot(cc["layer"], cc["spearman"], ls, marker="o", ms=3, color="tab:blue",
                label=f"Spearman (first 4 tokens {sinks})")
        ax.plot(cc["layer"], cc["pearson"], ls, marker="s", ms=3, color="tab:red",
                label=f"Pearson (first 4 tokens {sinks})")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(f"{MODELS[m]} (mean over 4 sequences)", fontsize=10)
    ax.set_xlabel("layer")
    ax.grid(True, alpha=0.3)
axes[0].set_ylabel("correlation(‖k_i‖, mean attention on i\nfrom the 128 decode queries)")
axes[1].legend(fontsize=7, loc="lower right")
fig.suptitle("Key norm vs attention later received, per layer (prompt tokens; negative = low norm gets attention)", fontsize=10)
fig.savefig(os.path.join(figs, "norm_attention_corr.png"), dpi=90)
corr = pd.concat(corr_rows)
corr.to_csv(os.path.join(figs, "..", "correlation.csv"), index=False)
for (model, sinks), g in corr.groupby(["model", "sinks"]):
    out.append(f"- {model}, first 4 tokens {sinks}: Spearman mean {g['spearman'].mean():.3f} "
               f"(negative in {(g['spearman'] < 0).sum()}/{len(g)} layers, range {g['spearman'].min():.2f}..{g['spearman'].max():.2f}); "
               f"Pearson mean {g['pearson'].mean():.3f} (negative in {(g['pearson'] < 0).sum()}/{len(g)})")

# 2. l2norm vs random vs oracle across budgets.
fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
STY = {"l2norm": ("tab:green", "o"), "random": ("tab:gray", "x"), "oracle": ("tab:purple", "^")}
for j, m in enumerate(MODELS):
    p = os.path.join(res, f"{m}_policies.h5")
    if not os.path.exists(p):
        continue
    s = ka.load_summary(p)
    for name in ("l2norm", "random", "oracle"):
        if name == "l2norm":
            d = s[(s["stages"] == "l2norm") & (s["l2norm.skip"].apply(lambda v: v == []))]
            x = d["l2norm.keep_ratio"]
        else:
            d = s[s["stages"] == name]
            x = d[f"{name}.ratio"]
        d = d.assign(x=x.astype(float)).sort_values("x")
        col, mk = STY[name]
        lab = name + (" (skip=[])" if name == "l2norm" else "")
        axes[0][j].plot(d["x"], d["mass_lost_mean"], marker=mk, color=col, label=lab)
        axes[1][j].plot(d["x"], d["rel_err_mean"], marker=mk, color=col, label=lab)
        for _, r in d.iterrows():
            out.append(f"- {MODELS[m]} {r['spec']}: mass lost {r['mass_lost_mean']:.3f}, rel err {r['rel_err_mean']:.3f}, mem ratio {r['memory_ratio']:.3f}")
    dflt = s[(s["stages"] == "l2norm") & (s["l2norm.skip"].isna())]
    for _, r in dflt.iterrows():
        out.append(f"- {MODELS[m]} {r['spec']} (default skip=[0,1]): mass lost {r['mass_lost_mean']:.3f}, rel err {r['rel_err_mean']:.3f}")
    axes[0][j].set_title(MODELS[m], fontsize=10)
    for i, yl in enumerate(("attention mass lost (1 − retained)", "attention-output rel err (mean)")):
        axes[i][j].set_ylabel(yl)
        axes[i][j].set_xlabel("budget: kept fraction of the prompt (keep_ratio / ratio)")
        axes[i][j].grid(True, alpha=0.3)
        axes[i][j].set_ylim(bottom=0)
axes[0][0].legend(fontsize=8)
fig.suptitle("Eviction once after prefill (decode tokens appended), every layer; teacher-forced replay", fontsize=10)
fig.savefig(os.path.join(figs, "eviction_budgets.png"), dpi=90)
open(os.path.join(figs, "..", "numbers.md"), "w").write("\n".join(out) + "\n")
print("\n".join(out))
