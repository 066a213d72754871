#!/usr/bin/env python3
"""Experiment 04 (SKVQ vs KIVI): plots.py RESULTS_DIR FIGURES_DIR [TRACES_DIR]."""
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))
import kvsim_analysis as ka  # noqa: E402

res, figs = sys.argv[1], sys.argv[2]
MODELS = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
out = ["| model | spec | bits/elem | ideal bits/elem | key err | value err | rel err mean | rel err p95 |",
       "|---|---|---:|---:|---:|---:|---:|---:|"]
interp = []
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
fig2, axes2 = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
for j, m in enumerate(MODELS):
    p = os.path.join(res, f"{m}_policies.h5")
    if not os.path.exists(p):
        continue
    s = ka.load_summary(p)
    s["ideal_bits"] = 16 * s["memory_ratio_ideal"]
    for _, r in s.iterrows():
        out.append(f"| {MODELS[m]} | `{r['spec']}` | {r['bits_per_element']:.3f} | {r['ideal_bits']:.3f} | {r['key_err_mean']:.4f} | "
                   f"{r['value_err_mean']:.4f} | {r['rel_err_mean']:.4f} | {r['rel_err_p95']:.4f} |")
    kivi = s[s["stages"] == "kivi"]
    skvq = s[s["stages"] == "skvq"]
    base = skvq[(skvq["skvq.reorder"].isna()) & (skvq["skvq.clip"].isna()) & (skvq["skvq.clip_search"].isna())]
    ax = axes[j]
    ax.scatter(kivi["bits_per_element"], kivi["rel_err_mean"], marker="o", color="tab:blue", label="KIVI (bits 1–2, G, R)")
    ax.scatter(base["bits_per_element"], base["rel_err_mean"], marker="s", color="tab:red", label="SKVQ (stored bits)")
    tern = base[base["skvq.v_bits"] == 1.5]
    ax.scatter(tern["ideal_bits"], tern["rel_err_mean"], marker="s", facecolors="none", edgecolors="tab:red",
               label="SKVQ with ternary V at log2(3) bits (ideal)")
    for d, c in ((ka.pareto_frontier(kivi), "tab:blue"), (ka.pareto_frontier(base), "tab:red")):
        ax.step(d["bits_per_element"], d["rel_err_mean"], where="post", color=c, lw=1, alpha=0.6)
    for _, r in s[s["stages"].isin(["kivi", "skvq"])].iterrows():
        lab = (r["spec"].replace("skvq:k_bits=2,", "").replace("kivi:", "").replace("bits=", "b")
               .replace("group=", "G").replace("residual=", "R").replace("v_bits=", "v").replace("window=", "w")
               .replace(",sinks=5", "").replace(",meta=fp8", " fp8").replace(",", " "))
        if r["stages"] == "skvq" and r.name not in base.index:
            continue
        ax.annotate(lab, (r["bits_per_element"], r["rel_err_mean"]), xytext=(4, -2), textcoords="offset points", fontsize=6)
    for target in (1.75, 2.0, 2.5, 3.0):
        k = ka.interpolate_at(ka.pareto_frontier(kivi), "bits_per_element", "rel_err_mean", target)
        q = ka.interpolate_at(ka.pareto_frontier(base), "bits_per_element", "rel_err_mean", target)
        interp.append(f"- {MODELS[m]} at {target} bits/element (interpolated along each Pareto front): KIVI {k:.4f}, SKVQ {q:.4f}")
    ax.set_xlabel("bits per cached element (achieved: metadata, fp16\nresidual / window / sinks included)")
    ax.set_ylabel("attention-output rel err (mean)")
    ax.set_yscale("log")
    ax.set_title(MODELS[m], fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7)

    # Ablations at k2 v2 g32 w32.
    abl = s[(s["stages"] == "skvq") & (s["skvq.group"] == 32) & (s["skvq.window"] == 32) & (s["skvq.v_bits"] == 2)
            & (s["skvq.sinks"].isna())]
    names, vals, kerr = [], [], []
    for _, r in abl.iterrows():
        names.append("reorder=" + ("false" if r["skvq.reorder"] is False else "true") + ", " +
                     ("clip_search" if r["skvq.clip_search"] is True else f"clip={r['skvq.clip'] if r['skvq.clip'] == r['skvq.clip'] and r['skvq.clip'] is not None else 0.92}"))
        vals.append(r["rel_err_mean"])
        kerr.append((r["key_err_mean"], r["value_err_mean"]))
    y = np.arange(len(names))
    ax2 = axes2[j]
    ax2.barh(y - 0.2, vals, 0.4, color="tab:red", label="attention-output rel err")
    ax2.barh(y + 0.2, [k for k, _ in kerr], 0.4, color="tab:gray", label="key rel err")
    ax2.set_yticks(y, names, fontsize=7)
    for yy, v in zip(y, vals):
        ax2.text(v, yy - 0.2, f" {v:.4f}", va="center", fontsize=6)
    w = s[(s["stages"] == "skvq") & (s["skvq.sinks"] == 5)].sort_values("skvq.window")
    ax2.set_xlabel("mean relative error")
    ax2.set_title(f"{MODELS[m]}: SKVQ K2 V2 g32 w32 ablations", fontsize=10)
    ax2.grid(True, axis="x", alpha=0.3)
    ax2.legend(fontsize=7, loc="lower right")
    for _, r in abl.iterrows():
        interp.append(f"- {MODELS[m]} ablation `{r['spec']}`: rel err {r['rel_err_mean']:.4f}, key err {r['key_err_mean']:.4f}, value err {r['value_err_mean']:.4f}")
    for _, r in w.iterrows():
        interp.append(f"- {MODELS[m]} window `{r['spec']}`: bits {r['bits_per_element']:.3f}, rel err {r['rel_err_mean']:.4f}")
fig.suptitle("SKVQ vs KIVI: error vs achieved bits per element (teacher-forced; SKVQ calibrated leave-one-out)", fontsize=10)
fig.savefig(os.path.join(figs, "skvq_vs_kivi.png"), dpi=90)
fig2.savefig(os.path.join(figs, "skvq_ablations.png"), dpi=90)
open(os.path.join(figs, "..", "tables.md"), "w").write("\n".join(out) + "\n\n" + "\n".join(interp) + "\n")
print("\n".join(interp))
