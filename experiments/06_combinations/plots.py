#!/usr/bin/env python3
"""Experiment 06 (combinations vs parts at equal memory): plots.py RESULTS_DIR FIGURES_DIR [TRACES]."""
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))
import kvsim_analysis as ka  # noqa: E402

res, figs = sys.argv[1], sys.argv[2]
MODELS = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}


def family(stages, spec):
    if stages == "kivi":
        return "KIVI alone (bits 2, 3, 4)"
    if stages == "minicache":
        return "MiniCache alone"
    if stages == "minicache+kivi":
        return "MiniCache+KIVI (bits 2, 4)"
    if stages == "h2o":
        return "H2O alone"
    if stages == "h2o+kivi":
        return "H2O+KIVI-" + spec.split("bits=")[1][0]
    if stages == "l2norm":
        return "l2norm alone"
    if stages == "l2norm+kivi":
        return "l2norm+KIVI-" + spec.split("bits=")[1][0]
    return None


STY = {"KIVI alone (bits 2, 3, 4)": ("black", "o", "-"), "MiniCache alone": ("tab:cyan", "D", ""),
       "MiniCache+KIVI (bits 2, 4)": ("tab:cyan", "D", "--"),
       "H2O alone": ("tab:orange", "o", "-"), "H2O+KIVI-4": ("tab:orange", "^", "--"), "H2O+KIVI-2": ("tab:orange", "v", ":"),
       "l2norm alone": ("tab:green", "s", "-"), "l2norm+KIVI-4": ("tab:green", "^", "--"), "l2norm+KIVI-2": ("tab:green", "v", ":")}
out = ["| model | spec | memory ratio | rel err mean | rel err p95 | mass lost |", "|---|---|---:|---:|---:|---:|"]
interp = []
fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
for ax, m in zip(axes, MODELS):
    p = os.path.join(res, f"{m}_policies.h5")
    if not os.path.exists(p):
        continue
    s = ka.load_summary(p)
    s["family"] = [family(a, b) for a, b in zip(s["stages"], s["spec"])]
    for _, r in s.sort_values("memory_ratio").iterrows():
        out.append(f"| {MODELS[m]} | `{r['spec']}` | {r['memory_ratio']:.3f} | {r['rel_err_mean']:.4f} | {r['rel_err_p95']:.4f} | {r['mass_lost_mean']:.3f} |")
    curves = {}
    for fam, (c, mk, ls) in STY.items():
        d = s[s["family"] == fam].sort_values("memory_ratio")
        if d.empty:
            continue
        ax.plot(d["memory_ratio"], d["rel_err_mean"], marker=mk, color=c, ls=ls or "none", label=fam)
        curves[fam] = d
    for target in (0.1, 0.15, 0.2, 0.3):
        vals = {f: ka.interpolate_at(d, "memory_ratio", "rel_err_mean", target) for f, d in curves.items()}
        interp.append(f"- {MODELS[m]} at memory {target:.0%}: " + ", ".join(f"{f} {v:.4f}" for f, v in vals.items() if v == v))
    ax.set_xlabel("memory ratio vs fp16 (achieved, incl. metadata)")
    ax.set_ylabel("attention-output rel err (mean)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(MODELS[m], fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.suptitle("Combinations vs their parts: error vs achieved memory (teacher-forced replay)", fontsize=10)
fig.savefig(os.path.join(figs, "combinations.png"), dpi=90)
open(os.path.join(figs, "..", "tables.md"), "w").write("\n".join(out) + "\n\n" + "\n".join(interp) + "\n")
print("\n".join(interp))
