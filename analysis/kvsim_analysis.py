#!/usr/bin/env python3
"""Helpers shared by the experiments (experiments/0*/plots.py).

Results files (docs/results-format.md) are read through the shared loader,
kvsim_results.load_results; this module adds spec parsing, equal-memory interpolation
and the trace-side statistics that need the raw Q/K/V (docs/trace-format.md):

    parse_spec(spec)                  -> [(stage, {param: value}), ...]
    load_summary(path)                -> /summary with `stages`, `model` and params
    counters(path)                    -> {run: {counter name: value}}
    pareto_frontier(df, x, y)         -> re-exported from kvsim_tables
    interpolate_at(df, x, y, x0)      -> y of a sorted curve at x0 (nan outside)
    key_norm_attention(trace, seq)    -> per (layer, kv head): key norms of the prompt
                                         tokens and the attention the decode queries give them
    norm_attention_correlation(...)   -> Pearson / Spearman correlation per layer
    adjacent_layer_cosine(trace, seq) -> mean cosine of K (and V) with the previous layer
"""

from __future__ import annotations

import os
import sys
from typing import Any

import h5py
import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvsim_results import load_results  # noqa: E402
from kvsim_tables import pareto_frontier  # noqa: E402

__all__ = ["parse_spec", "load_summary", "counters", "pareto_frontier", "load_results",
           "interpolate_at", "prompt_len", "key_norm_attention", "norm_attention_correlation",
           "adjacent_layer_cosine"]


def _value(text: str) -> Any:
    """A spec parameter value: a [list], int, float, true/false, or the text itself."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_value(t) for t in text[1:-1].split(",") if t.strip()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text


def _split_stages(spec: str) -> list[str]:
    """The C++ parser's stage split (policies/registry.cc): a '+' outside brackets
    separates stages only when a policy name (a lower-case letter or '_') follows it, so
    values such as 1e+3 stay whole."""
    text = "".join(spec.split())
    parts, cur, depth = [], "", 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if ch == "+" and depth == 0 and (nxt == "" or nxt.islower() or nxt == "_"):
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _parse_spec_text(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """The structure of a spec the C++ parser cannot check here (kvsim not installed, or
    a policy this process does not know): stages split as the C++ parser splits them,
    parameters as written, typed by _value."""
    stages = []
    for part in _split_stages(spec):
        name, _, rest = part.partition(":")
        params: dict[str, Any] = {}
        depth, cur = 0, ""
        items = []
        for ch in rest:
            depth += ch == "["
            depth -= ch == "]"
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            items.append(cur)
        for item in items:
            k, _, v = item.partition("=")
            params[k] = _value(v)
        stages.append((name, params))
    return stages


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """'h2o:heavy=0.1+kivi:bits=2' -> [('h2o', {'heavy': 0.1}), ('kivi', {'bits': 2})]:
    each stage with the parameters the spec sets (typed). Parsed by the C++ parser through
    the kvsim package (kvsim.parse_spec) when it is installed and knows the policies;
    otherwise split by the same rule (a '+' before a policy name separates stages, so
    'h2o:heavy_tokens=1e+3+kivi' is two stages)."""
    try:
        import kvsim
    except ImportError:
        return _parse_spec_text(spec)
    try:
        parsed = kvsim.parse_spec(spec)
    except kvsim.ConfigError:
        return _parse_spec_text(spec)
    return [(s.name, s.given_params) for s in parsed.stages]


def load_summary(path: str | os.PathLike, model: str | None = None) -> pd.DataFrame:
    """The /summary table with added columns: `stages` ('h2o+kivi'), `model`, and one
    column `<stage>.<param>` per parameter written in the spec."""
    res = load_results(path)
    s = res.summary.copy()
    s["model"] = model or res.attrs.get("model_name", "")
    s["stages"] = ["+".join(n for n, _ in parse_spec(x)) for x in s["spec"]]
    extra: dict[str, list[Any]] = {}
    for i, spec in enumerate(s["spec"]):
        for name, params in parse_spec(spec):
            for k, v in params.items():
                extra.setdefault(f"{name}.{k}", [None] * len(s))[i] = v
    for k, v in extra.items():
        s[k] = v
    s["mass_lost_mean"] = 1.0 - s["mass_retained_mean"]
    return s


def counters(path: str | os.PathLike) -> dict[int, dict[str, float]]:
    """Every run's /runs/NNNN/counters as {run: {name: value}} ({} for a run without)."""
    return load_results(path).counters


def interpolate_at(df: pd.DataFrame, x: str, y: str, x0: float) -> float:
    """Linear interpolation of y at x0 along df sorted by x; nan outside the range."""
    d = df[[x, y]].dropna().sort_values(x)
    if d.empty or x0 < d[x].min() or x0 > d[x].max():
        return float("nan")
    return float(np.interp(x0, d[x].to_numpy(float), d[y].to_numpy(float)))


# --------------------------------------------------------------------------- traces


def _trace_meta(f: h5py.File) -> dict[str, Any]:
    """Layer ids, sliding windows, sequence names, attention scale and head counts."""
    layer_ids = [int(v) for v in f["layer_ids"][()]]
    windows = ([int(v) for v in f["sliding_window"][()]] if "sliding_window" in f
               else [0] * len(layer_ids))
    seqs = f["sequences"]
    return {"layer_ids": layer_ids, "windows": windows, "seq_names": sorted(seqs),
            "scale": float(f.attrs["attn_scale"]), "hq": int(f.attrs["num_q_heads"]),
            "hkv": int(f.attrs["num_kv_heads"])}


def prompt_len(f: h5py.File, name: str) -> int:
    """The prompt length P of trace sequence `name` (attribute prompt_len)."""
    g = f["sequences"][name]
    for key in ("prompt_len", "prompt_length"):
        if key in g.attrs:
            return int(g.attrs[key])
    raise KeyError(f"sequence {name}: no prompt_len attribute")


def key_norm_attention(trace: str, seq: int = 0) -> pd.DataFrame:
    """Per (layer, kv head, prompt token i): the L2 norm of key i and the mean exact
    attention it receives from the sequence's decode queries (t >= P), averaged over
    the decode steps and the query heads of the KV group. In sliding-window layers only
    the prompt tokens inside every decode query's window are kept (i > T-1-W), so a
    token's later attention is never zero merely because the window passed it."""
    rows = []
    with h5py.File(trace, "r") as f:
        meta = _trace_meta(f)
        name = meta["seq_names"][seq]
        P = prompt_len(f, name)
        g = f["sequences"][name]
        group = meta["hq"] // meta["hkv"]
        for li, layer in enumerate(meta["layer_ids"]):
            K = g["k"][li].astype(np.float32)      # [Hkv, T, d]
            Q = g["q"][li].astype(np.float32)      # [Hq, T, d]
            T = K.shape[1]
            W = meta["windows"][li]
            lo = max(0, T - W) if W > 0 else 0
            for h in range(meta["hkv"]):
                att = np.zeros(P)
                n = 0
                for qh in range(h * group, (h + 1) * group):
                    s = (Q[qh, P:T] @ K[h].T) * meta["scale"]      # [T-P, T]
                    t = np.arange(P, T)[:, None]
                    i = np.arange(T)[None, :]
                    mask = i > t
                    if W > 0:
                        mask |= i <= t - W
                    s = np.where(mask, -np.inf, s)
                    s -= s.max(axis=1, keepdims=True)
                    p = np.exp(s)
                    p /= p.sum(axis=1, keepdims=True)
                    att += p[:, :P].sum(axis=0)
                    n += T - P
                att /= max(n, 1)
                norms = np.linalg.norm(K[h, :P], axis=1)
                idx = np.arange(lo, P)
                rows.append(pd.DataFrame({"layer": layer, "kv_head": h, "token": idx,
                                          "key_norm": norms[idx], "attention": att[idx]}))
    return pd.concat(rows, ignore_index=True)


def norm_attention_correlation(data: pd.DataFrame, skip_first: int = 0) -> pd.DataFrame:
    """Per layer: Pearson and Spearman correlation of key norm with later attention,
    pooled over KV heads (computed per head, then averaged) over the tokens with index
    >= skip_first (skip_first=4 leaves out the attention-sink tokens)."""
    out = []
    for layer, d in data[data["token"] >= skip_first].groupby("layer"):
        ps, ss = [], []
        for _, h in d.groupby("kv_head"):
            if len(h) < 3 or h["key_norm"].std() == 0 or h["attention"].std() == 0:
                continue
            ps.append(np.corrcoef(h["key_norm"], h["attention"])[0, 1])
            ra = h["key_norm"].rank().to_numpy()
            rb = h["attention"].rank().to_numpy()
            ss.append(np.corrcoef(ra, rb)[0, 1])
        out.append({"layer": int(layer), "pearson": float(np.mean(ps)) if ps else np.nan,
                    "spearman": float(np.mean(ss)) if ss else np.nan})
    return pd.DataFrame(out)


def adjacent_layer_cosine(trace: str, seq: int = 0) -> pd.DataFrame:
    """Per stored layer l (after the first): mean over tokens and KV heads of the cosine
    similarity of K_l with K_{l-1} and of V_l with V_{l-1} (stored layers adjacent in the
    model only), plus the mean angular distance W/pi of the keys."""
    out = []
    with h5py.File(trace, "r") as f:
        meta = _trace_meta(f)
        g = f["sequences"][meta["seq_names"][seq]]
        prev = None
        for li, layer in enumerate(meta["layer_ids"]):
            K = g["k"][li].astype(np.float32)
            V = g["v"][li].astype(np.float32)
            if prev is not None and prev[0] == layer - 1:
                row = {"layer": layer, "same_window": meta["windows"][li] == prev[3]}
                for name, a, b in (("k", K, prev[1]), ("v", V, prev[2])):
                    c = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
                                           + 1e-12)
                    row[f"cos_{name}"] = float(c.mean())
                    row[f"angle_{name}"] = float((np.arccos(np.clip(c, -1, 1)) / np.pi).mean())
                out.append(row)
            prev = (layer, K, V, meta["windows"][li])
    return pd.DataFrame(out)
