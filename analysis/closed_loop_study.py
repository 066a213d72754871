"""How well teacher-forced replay predicts the closed loop (experiment 07, issue 13).

Joins replay metrics (a `kvsim sweep` results file) with closed-loop outcomes (the
`/closed_loop` table of `python -m kvsim.live`) per (model, config, prompt), then ranks the
configurations by each replay metric and each outcome and reports rank correlations with
bootstrap intervals, overall, within each family and across families, plus a held-out
combined metric (issue 13, part 5). Pure NumPy/pandas: the statistics are tested on
synthetic data with known answers (tests/python/test_closed_loop_study.py).

    import closed_loop_study as cls
    rows = cls.join_study(replay_frames, closed_frames)          # per (model, spec, sequence)
    cfg = cls.config_means(rows)                                 # per (model, spec)
    table = cls.correlation_table(rows, n_boot=1000)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

# Replay metrics, each oriented so that larger means more damage predicted.
REPLAY_METRICS: dict[str, str] = {
    "rel_err_mean": "attention-output rel err, mean",
    "rel_err_p95": "attention-output rel err, p95",
    "rel_err_geomean": "attention-output rel err, geometric mean (less weight to a few bad heads)",
    "mass_lost": "1 - attention mass retained",
    "kl": "replay KL among kept tokens",
    "one_minus_cosine": "1 - cosine of attention outputs",
    "key_err": "key reconstruction error",
    "value_err": "value reconstruction error",
    "top1_miss": "1 - attention top-1 agreement",
    "memory_saved": "1 - memory ratio (bits vs fp16)",
}
# Closed-loop outcomes, each oriented as damage (larger = worse than `full`).
OUTCOMES: dict[str, str] = {
    "delta_nll": "NLL - NLL of full (nats/token)",
    "kl_mean": "next-token KL(full || policy), mean",
    "top1_miss": "1 - next-token top-1 agreement",
    "accuracy_loss": "answer accuracy of full - of policy",
    "token_disagreement": "1 - greedy token agreement",
}
# Kinds of kvsim's built-in policies (`kvsim policies`); a spec of several stages is a composition.
STAGE_KINDS: dict[str, str] = {
    "streamingllm": "evict", "snapkv": "evict", "h2o": "evict", "l2norm": "evict",
    "random": "evict", "oracle": "evict", "kivi": "quantize", "uniform": "quantize",
    "skvq": "quantize", "mikv": "quantize", "full": "quantize", "minicache": "merge",
}
REPLAY_ONLY = ("oracle",)
NOISE_FLOOR = 1e-6  # |mass_lost|, |kl| below this are float noise: set to 0
GEOMEAN_FLOOR = 1e-6  # rel err of exact rows is 0: the geometric mean is taken of rel_err + this  # stages that need the future: no closed-loop counterpart


def stage_names(spec: str) -> list[str]:
    """The stage names of a spec: ``"h2o:heavy=0.1+kivi:bits=4"`` -> ``["h2o", "kivi"]``."""
    return [part.split(":", 1)[0].strip() for part in spec.split("+")]


def interleave(specs: Sequence[str]) -> list[str]:
    """The specs reordered round-robin over their stage combinations (`h2o`, `h2o+kivi`, ...),
    each group's own order taken odd positions first (a sweep's 746, 496, 246, 96 becomes
    496, 96, 746, 246): the first specs of the list span every policy and both ends of its
    budgets. `full` stays first."""
    groups: dict[str, list[str]] = {}
    for s in specs:
        groups.setdefault("+".join(stage_names(s)), []).append(s)
    ordered = [g[1::2] + g[0::2] for g in groups.values()]
    out = [s for g in ordered for s in g if stage_names(s) == ["full"]]
    for i in range(max((len(g) for g in ordered), default=0)):
        out += [g[i] for g in ordered if i < len(g) and stage_names(g[i]) != ["full"]]
    return out


def family(spec: str, kinds: dict[str, str] | None = None) -> str:
    """``full``, ``reference`` (replay-only stages), ``composition`` (several stages) or the kind
    of its one stage (``evict``, ``quantize``, ``merge``)."""
    kinds = STAGE_KINDS if kinds is None else kinds
    names = stage_names(spec)
    if names == ["full"]:
        return "full"
    if any(n in REPLAY_ONLY for n in names):
        return "reference"
    if len(names) > 1:
        return "composition"
    if names[0] not in kinds:
        raise ValueError(f"unknown stage '{names[0]}' in spec '{spec}'")
    return kinds[names[0]]


# --- per (config, sequence) tables -----------------------------------------------------------

def replay_per_sequence(summary: pd.DataFrame, steps: pd.DataFrame, kv: pd.DataFrame) -> pd.DataFrame:
    """Replay metrics per (spec, sequence) from the frames of `kvsim.load_results` (one
    model's sweep): means over the measured (layer, head, step) rows, p95 and geometric mean
    of rel_err, memory as (data + meta bits) / fp16 bits."""
    g = steps.groupby(["run", "sequence"])
    log_rel = np.log(steps["rel_err"].astype(float) + GEOMEAN_FLOOR).groupby([steps["run"], steps["sequence"]])
    out = pd.DataFrame({
        "rel_err_geomean": np.exp(log_rel.mean()) - GEOMEAN_FLOOR,
        "rel_err_mean": g["rel_err"].mean(),
        "rel_err_p95": g["rel_err"].quantile(0.95),
        "mass_lost": 1.0 - g["mass_retained"].mean(),
        "kl": g["kl"].mean(),
        "one_minus_cosine": 1.0 - g["cosine"].mean(),
        "top1_miss": 1.0 - g["top1_agreement"].mean(),
    })
    k = kv.groupby(["run", "sequence"])
    bits = k[["data_bits", "meta_bits", "fp16_bits"]].sum()
    out["key_err"] = k["key_err"].mean()
    out["value_err"] = k["value_err"].mean()
    out["memory_ratio"] = (bits["data_bits"] + bits["meta_bits"]) / bits["fp16_bits"]
    out["memory_saved"] = 1.0 - out["memory_ratio"]
    # float32 noise (~1e-7) where a metric is 0 by construction (mass under pure quantization,
    # KL under pure eviction) would otherwise rank those configs at random
    for col in ("mass_lost", "kl"):
        out[col] = out[col].where(out[col].abs() >= NOISE_FLOOR, 0.0)
    out = out.reset_index()
    specs = summary.set_index("run")["spec"]
    out.insert(0, "spec", out["run"].map(specs))
    return out.drop(columns="run")


def closed_loop_per_sequence(closed: pd.DataFrame) -> pd.DataFrame:
    """Closed-loop outcomes per (spec, sequence) as damage vs `full` (see OUTCOMES) from the
    `/closed_loop` table (`kvsim.live.load_closed_loop`). `accuracy_loss` is the full run's
    `answer_correct` minus the policy's (NaN where the sequence has no answer)."""
    c = closed.copy()
    c["spec"] = c["run"]
    ans = c["answer_correct"].astype(float).where(c["answer_correct"] >= 0)
    full = c[c["spec"] == "full"].set_index("sequence")
    full_ans = ans[c["spec"] == "full"].set_axis(full.index)
    c["accuracy_loss"] = c["sequence"].map(full_ans) - ans
    c["top1_miss"] = 1.0 - c["top1_agreement"]
    c["token_disagreement"] = 1.0 - c["token_agreement"]
    keep = ["spec", "sequence", "kind", "delta_nll", "kl_mean", "top1_miss", "accuracy_loss",
            "token_disagreement", "answer_correct", "seconds"]
    return c[[k for k in keep if k in c.columns]]


def complete_sequences(closed: pd.DataFrame) -> list[int]:
    """The sequences of a closed-loop table that every spec in it has finished (a run under
    way has finished some (spec, sequence) rows only)."""
    specs = closed["spec"].nunique()
    per_seq = closed.groupby("sequence")["spec"].nunique()
    return sorted(int(s) for s in per_seq[per_seq == specs].index)


def join_study(replay: dict[str, pd.DataFrame], closed: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (model, spec, sequence): replay metrics (`replay_per_sequence`, per model)
    next to closed-loop outcomes (`closed_loop_per_sequence`; columns suffixed `_live` where a
    name is on both sides, e.g. `top1_miss_live`). Replay-only specs (the oracle) keep NaN
    outcomes."""
    frames = []
    for model, rep in replay.items():
        cl = closed.get(model)
        if cl is None:
            j = rep.copy()
        else:
            j = rep.merge(cl, on=["spec", "sequence"], how="left", suffixes=("", "_live"))
        j.insert(0, "model", model)
        frames.append(j)
    out = pd.concat(frames, ignore_index=True)
    out["family"] = [family(s) for s in out["spec"]]
    return out


def outcome_column(outcome: str, frame: pd.DataFrame) -> str:
    """The column of `frame` that holds a closed-loop outcome (`top1_miss_live` after a join)."""
    return outcome + "_live" if outcome + "_live" in frame.columns else outcome


def config_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Means over the sequences per (model, spec), with the family."""
    num = rows.select_dtypes("number").columns.drop("sequence", errors="ignore")
    out = rows.groupby(["model", "spec"], sort=False)[list(num)].mean().reset_index()
    out["family"] = [family(s) for s in out["spec"]]
    return out


# --- rank statistics ---------------------------------------------------------------------------

def average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank."""
    v = np.asarray(v, dtype=float)
    order = np.argsort(v, axis=-1, kind="mergesort")
    sorted_v = np.take_along_axis(v, order, axis=-1)
    n = v.shape[-1]
    ranks_sorted = np.broadcast_to(np.arange(1, n + 1, dtype=float), v.shape).copy()
    # average the ranks of each run of equal values
    flat_v = sorted_v.reshape(-1, n)
    flat_r = ranks_sorted.reshape(-1, n)
    for row_v, row_r in zip(flat_v, flat_r):
        start = 0
        for i in range(1, n + 1):
            if i == n or row_v[i] != row_v[start]:
                if i - start > 1:
                    row_r[start:i] = row_r[start:i].mean()
                start = i
    out = np.empty_like(ranks_sorted)
    np.put_along_axis(out, order, ranks_sorted.reshape(v.shape), axis=-1)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant or there are < 3 points."""
    a = np.asarray(a, float) - np.mean(a)
    b = np.asarray(b, float) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if len(a) >= 3 and den > 0 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def kendall_tau_b(x: Sequence[float], y: Sequence[float], pair_mask: np.ndarray | None = None) -> float:
    """Kendall's tau-b over all pairs i < j (or the pairs where `pair_mask[i, j]`):
    (concordant - discordant) / sqrt((pairs - ties in x) (pairs - ties in y))."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    mask = np.triu(np.ones((n, n), bool), 1)
    if pair_mask is not None:
        mask &= pair_mask
    s = (sx * sy)[mask].sum()
    nx = (sx[mask] != 0).sum()
    ny = (sy[mask] != 0).sum()
    return float(s / np.sqrt(nx * ny)) if nx > 0 and ny > 0 else float("nan")


def cross_family_tau(x: Sequence[float], y: Sequence[float], fam: Sequence[str]) -> float:
    """Kendall's tau-b over the pairs of configurations from *different* families: how well
    the metric orders one family's configs against another's (the calibration across
    families; within-family order is excluded)."""
    fam = np.asarray(fam)
    return kendall_tau_b(x, y, fam[:, None] != fam[None, :])


def discordant_cross_pairs(x: Sequence[float], y: Sequence[float], fam: Sequence[str]) -> tuple[int, int]:
    """(discordant, all) pairs of configurations from different families."""
    x, y, fam = np.asarray(x, float), np.asarray(y, float), np.asarray(fam)
    n = len(x)
    mask = np.triu(np.ones((n, n), bool), 1) & (fam[:, None] != fam[None, :])
    prod = (np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :]))[mask]
    return int((prod < 0).sum()), int(mask.sum())


# --- bootstrap over prompts and configurations --------------------------------------------------

@dataclass
class Panel:
    """Config x prompt matrices of one (scope): `x[c, p]`, `y[c, p]`, the group of each config
    (its model: prompts are resampled within a model) and its family."""

    x: np.ndarray
    y: np.ndarray
    model: np.ndarray
    fam: np.ndarray


def make_panel(rows: pd.DataFrame, metric: str, outcome: str) -> Panel:
    """The panel of configs x prompts for one metric/outcome pair; configs or prompts with a
    missing value are dropped (a config needs every prompt of its model)."""
    ocol = outcome_column(outcome, rows)
    d = rows[["model", "spec", "sequence", "family", metric, ocol]].dropna()
    xs, ys, models, fams = [], [], [], []
    width = d.groupby("model")["sequence"].nunique().max() if len(d) else 0
    for (model, spec), g in d.groupby(["model", "spec"], sort=False):
        n_prompts = d[d["model"] == model]["sequence"].nunique()
        if len(g) != n_prompts:
            continue
        g = g.sort_values("sequence")
        pad = width - len(g)  # models with fewer prompts: pad with NaN, ignored in the means
        xs.append(np.r_[g[metric].to_numpy(float), np.full(pad, np.nan)])
        ys.append(np.r_[g[ocol].to_numpy(float), np.full(pad, np.nan)])
        models.append(model)
        fams.append(g["family"].iloc[0])
    if not xs:
        return Panel(np.empty((0, 0)), np.empty((0, 0)), np.array([]), np.array([]))
    return Panel(np.array(xs), np.array(ys), np.array(models), np.array(fams))


def _weighted_means(m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row means of `m` with weights `w`, NaN entries (padding) ignored."""
    ww = np.where(np.isnan(m), 0.0, w)
    return (np.nan_to_num(m) * ww).sum(1) / ww.sum(1)


def bootstrap_stat(panel: Panel, stat: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
                   n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(point estimate, 2.5 %, 97.5 % percentile interval) of `stat(x_means, y_means, fam)`
    over the config means. Each replicate resamples the prompts with replacement (within each
    model: new weights of each prompt in every config's mean), then the configurations with
    replacement (a two-stage bootstrap over both sources of variation)."""
    x, y = panel.x, panel.y
    if len(x) < 3:
        return float("nan"), float("nan"), float("nan")
    ones = np.ones_like(x)
    point = stat(_weighted_means(x, ones), _weighted_means(y, ones), panel.fam)
    rng = np.random.default_rng(seed)
    n_cfg, width = x.shape
    models = np.unique(panel.model)
    reps = []
    for _ in range(n_boot):
        w = np.zeros_like(x)
        for m in models:
            rows = panel.model == m
            n_p = int((~np.isnan(x[rows][0])).sum())
            counts = np.bincount(rng.integers(0, n_p, n_p), minlength=width).astype(float)
            w[rows] = counts
        xm, ym = _weighted_means(x, w), _weighted_means(y, w)
        pick = rng.integers(0, n_cfg, n_cfg)
        v = stat(xm[pick], ym[pick], panel.fam[pick])
        if v == v:
            reps.append(v)
    if not reps:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return point, float(lo), float(hi)


STATS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "spearman": lambda x, y, f: spearman(x, y),
    "kendall": lambda x, y, f: kendall_tau_b(x, y),
    "cross_family_tau": cross_family_tau,
}


def correlation_table(rows: pd.DataFrame, metrics: Iterable[str] = REPLAY_METRICS,
                      outcomes: Iterable[str] = OUTCOMES, n_boot: int = 1000, seed: int = 0,
                      models: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (scope, metric, outcome): Spearman, Kendall tau-b and the cross-family tau,
    each with its bootstrap interval (`bootstrap_stat`), over the config means. Scopes: each
    model and `pooled` (both models' configs as points), over all families (`family` =
    `all`) and within each family (only Spearman and Kendall). `full` and replay-only specs
    are left out."""
    rows = rows[~rows["family"].isin(["full", "reference"])]
    scopes = list(models) if models is not None else sorted(rows["model"].unique())
    if len(scopes) > 1:
        scopes.append("pooled")
    out = []
    for scope in scopes:
        part = rows if scope == "pooled" else rows[rows["model"] == scope]
        for fam in ["all"] + sorted(part["family"].unique()):
            sub = part if fam == "all" else part[part["family"] == fam]
            for metric in metrics:
                for outcome in outcomes:
                    panel = make_panel(sub, metric, outcome)
                    rec = {"scope": scope, "family": fam, "metric": metric, "outcome": outcome,
                           "configs": len(panel.x)}
                    for name, fn in STATS.items():
                        if name == "cross_family_tau" and fam != "all":
                            continue
                        rec[name], rec[name + "_lo"], rec[name + "_hi"] = bootstrap_stat(
                            panel, fn, n_boot=n_boot, seed=seed)
                    out.append(rec)
    return pd.DataFrame(out)


def disagreements(cfg: pd.DataFrame, metric: str, outcome: str, k: int = 5) -> pd.DataFrame:
    """The k configurations (per model) whose rank by `metric` is furthest from their rank by
    `outcome`: `rank_gap` > 0 means replay ranks it as more damaging than the closed loop does."""
    ocol = outcome_column(outcome, cfg)
    d = cfg[~cfg["family"].isin(["full", "reference"])].dropna(subset=[metric, ocol]).copy()
    parts = []
    for _, g in d.groupby("model", sort=False):
        g = g.copy()
        g["rank_replay"] = average_ranks(g[metric].to_numpy())
        g["rank_live"] = average_ranks(g[ocol].to_numpy())
        g["rank_gap"] = g["rank_replay"] - g["rank_live"]
        parts.append(g.reindex(g["rank_gap"].abs().sort_values(ascending=False).index).head(k))
    return pd.concat(parts)[["model", "spec", "family", metric, ocol, "rank_replay", "rank_live",
                             "rank_gap"]]


# --- part 5: a combined metric, fitted on held-out data -----------------------------------------

COMBINED_FEATURES = ("rel_err_mean", "mass_lost", "one_minus_cosine", "value_err", "key_err")


def _features(frame: pd.DataFrame, features: Sequence[str], eps: float = 1e-6) -> np.ndarray:
    return np.log(frame[list(features)].to_numpy(float).clip(min=0) + eps)


def fit_combined(train: pd.DataFrame, target: str = "delta_nll",
                 features: Sequence[str] = COMBINED_FEATURES, ridge: float = 1.0) -> np.ndarray:
    """Ridge regression of the rank of `target` (scaled to 0..1) on the logs of the replay
    `features` (standardised on `train`), over config means. Returns [mean, std, weights,
    intercept] packed for `apply_combined`. Fitting ranks, not values, matches what is scored."""
    f = _features(train, features)
    mu, sd = f.mean(0), f.std(0) + 1e-12
    z = (f - mu) / sd
    t = average_ranks(train[outcome_column(target, train)].to_numpy())
    t = (t - 1) / max(len(t) - 1, 1)
    a = np.c_[z, np.ones(len(z))]
    reg = ridge * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(a.T @ a + reg, a.T @ t)
    return np.concatenate([mu, sd, w])


def apply_combined(frame: pd.DataFrame, params: np.ndarray,
                   features: Sequence[str] = COMBINED_FEATURES) -> np.ndarray:
    """The combined metric of `fit_combined` on new rows (larger = more damage predicted)."""
    k = len(features)
    mu, sd, w = params[:k], params[k:2 * k], params[2 * k:]
    z = (_features(frame, features) - mu) / sd
    return z @ w[:-1] + w[-1]


def _fit_heldout(train: pd.DataFrame, target: str, features: Sequence[str],
                 ridge: float) -> np.ndarray | None:
    """`fit_combined` on the config means of `train` that have the outcome; None when fewer
    than 3 configurations have it (nothing to fit yet)."""
    if train.empty:
        return None
    cm = config_means(train).dropna(subset=[outcome_column(target, train)])
    return fit_combined(cm, target, features, ridge) if len(cm) >= 3 else None


def heldout_combined(rows: pd.DataFrame, target: str = "delta_nll",
                     features: Sequence[str] = COMBINED_FEATURES, ridge: float = 1.0) -> pd.DataFrame:
    """Adds `combined_model_out` (fitted on the other models' config means),
    `combined_prompt_out` (per model, fitted on the config means over the other half of the
    prompts: even/odd positions) and `combined_family_out` (fitted on the config means of
    the other families, all models: the strictest, a new family's configs are scored by a fit
    that never saw that family) as replay metrics of every row; nothing is fitted on the rows
    it scores."""
    rows = rows.copy()
    live = rows[~rows["family"].isin(["full", "reference"])]
    rows["combined_model_out"] = np.nan
    rows["combined_prompt_out"] = np.nan
    rows["combined_family_out"] = np.nan
    for fam in live["family"].unique():
        p = _fit_heldout(live[live["family"] != fam], target, features, ridge)
        if p is None:
            continue
        sel = rows["family"] == fam
        rows.loc[sel, "combined_family_out"] = apply_combined(rows[sel], p, features)
    models = rows["model"].unique()
    for m in models:
        p = _fit_heldout(live[live["model"] != m], target, features, ridge)
        if p is not None:
            sel = rows["model"] == m
            rows.loc[sel, "combined_model_out"] = apply_combined(rows[sel], p, features)
        seqs = np.sort(live[live["model"] == m]["sequence"].unique())
        halves = [set(seqs[0::2]), set(seqs[1::2])]
        for train_half, test_half in (halves, halves[::-1]):
            p = _fit_heldout(live[(live["model"] == m) & live["sequence"].isin(train_half)],
                             target, features, ridge)
            if p is None:
                continue
            sel = (rows["model"] == m) & rows["sequence"].isin(test_half)
            rows.loc[sel, "combined_prompt_out"] = apply_combined(rows[sel], p, features)
    return rows
