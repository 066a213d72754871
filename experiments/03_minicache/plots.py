#!/usr/bin/env python3
"""Experiment 03 (MiniCache): plots.py RESULTS_DIR FIGURES_DIR TRACES_DIR."""
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))
import kvsim_analysis as ka  # noqa: E402

res, figs, traces = sys.argv[1], sys.argv[2], sys.argv[3]
MODELS = {"smollm2": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
COL = {"smollm2": "tab:blue", "gemma3-270m": "tab:orange"}
out = []

# 1. Adjacent-layer similarity from the trace (per token and KV head, mean over 4 sequences).
fig, ax = plt.subplots(figsize=(7.5, 4), constrained_layout=True)
for m in MODELS:
    c = pd.concat([ka.adjacent_layer_cosine(os.path.join(traces, f"{m}_large.h5"), s) for s in range(4)])
    c = c.groupby("layer")[["cos_k", "cos_v", "angle_k", "angle_v"]].mean().reset_index()
    c.to_csv(os.path.join(figs, "..", f"adjacent_cosine_{m}.csv"), index=False)
    ax.plot(c["layer"], c["cos_k"], "o-", color=COL[m], ms=3, label=f"{MODELS[m]}: keys")
    ax.plot(c["layer"], c["cos_v"], "s--", color=COL[m], ms=3, label=f"{MODELS[m]}: values")
    half = c["layer"] >= c["layer"].max() / 2
    out.append(f"- {MODELS[m]}: mean cos(K_l, K_l-1) shallow half {c.loc[~half, 'cos_k'].mean():.3f}, deep half {c.loc[half, 'cos_k'].mean():.3f}; "
               f"V shallow {c.loc[~half, 'cos_v'].mean():.3f}, deep {c.loc[half, 'cos_v'].mean():.3f}; max K {c['cos_k'].max():.3f} at layer {int(c.loc[c['cos_k'].idxmax(), 'layer'])}")
ax.axhline(0, color="black", lw=0.8)
ax.set_xlabel("layer l (similarity with layer l−1)")
ax.set_ylabel("mean cosine similarity per token and KV head")
ax.set_title("Cross-layer similarity of the KV states by depth (post-RoPE, per head)", fontsize=10)
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
fig.savefig(os.path.join(figs, "adjacent_cosine.png"), dpi=90)

# 2. Error and memory vs start layer S.
fig, ax = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
for m in MODELS:
    p = os.path.join(res, f"{m}_start.h5")
    if not os.path.exists(p):
        continue
    s = ka.load_summary(p).sort_values("minicache.start")
    ax[0].plot(s["minicache.start"], s["rel_err_mean"], "o-", color=COL[m], label=MODELS[m])
    ax[1].plot(s["minicache.start"], s["memory_ratio"], "o-", color=COL[m], label=MODELS[m])
    for _, r in s.iterrows():
        out.append(f"- {MODELS[m]} start={r['minicache.start']}: rel err {r['rel_err_mean']:.3f}, memory ratio {r['memory_ratio']:.3f}")
ax[0].set_ylabel("attention-output rel err (mean over all layers)")
ax[1].set_ylabel("memory ratio vs fp16")
for a in ax:
    a.set_xlabel("first merged layer S (pairs S,S+1; S+2,S+3; …)")
    a.grid(True, alpha=0.3)
    a.legend(fontsize=8)
ax[0].set_title("Error of merging from S on (gamma 0.05, rule=top)", fontsize=10)
ax[1].set_title("Memory of merging from S on", fontsize=10)
fig.savefig(os.path.join(figs, "start_layer.png"), dpi=90)

# 3. Retention fraction and error vs gamma for both rules.
fig, ax = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
for m in MODELS:
    p = os.path.join(res, f"{m}_gamma.h5")
    if not os.path.exists(p):
        continue
    s = ka.load_summary(p)
    cnt = ka.counters(p)
    s["retained_frac"] = [cnt[int(r)].get("minicache.retained", float("nan")) /
                          max(1.0, cnt[int(r)].get("minicache.retained", 0) + cnt[int(r)].get("minicache.merged", 0))
                          for r in s["run"]]
    s = s[s["stages"] == "minicache"]
    for rule, ls in (("top", "-"), ("paper", "--")):
        d = s[s["minicache.rule"] == rule].sort_values("minicache.gamma")
        ax[0].plot(d["minicache.gamma"], d["retained_frac"], ls, marker="o", color=COL[m], label=f"{MODELS[m]}, rule={rule}")
        ax[1].plot(d["minicache.gamma"], d["rel_err_mean"], ls, marker="o", color=COL[m], label=f"{MODELS[m]}, rule={rule}")
        for _, r in d.iterrows():
            out.append(f"- {MODELS[m]} gamma={r['minicache.gamma']} rule={rule}: retained {r['retained_frac']:.4f}, rel err {r['rel_err_mean']:.3f}, memory ratio {r['memory_ratio']:.3f}")
ax[0].set_ylabel("fraction of token decisions retained\n(minicache.retained / (merged + retained))")
ax[1].set_ylabel("attention-output rel err (mean over all layers)")
for a in ax:
    a.set_xlabel("gamma")
    a.grid(True, alpha=0.3)
ax[0].legend(fontsize=7)
ax[0].set_title("Retention vs gamma (default start S = L/2)", fontsize=10)
ax[1].set_title("Error vs gamma", fontsize=10)
fig.savefig(os.path.join(figs, "gamma_retention.png"), dpi=90)
open(os.path.join(figs, "..", "numbers.md"), "w").write("\n".join(out) + "\n")
print("\n".join(out))
