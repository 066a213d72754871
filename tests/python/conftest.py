"""Shared helpers for the Python analysis tests.

write_fake_results() writes a small synthetic results file that follows
docs/results-format.md (version 1): root attributes, /summary and /runs/NNNN with
steps, kv and aggregates tables, with the summary numbers computed from the tables.
Its table groups track creation order, so their columns are stored in schema order.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANALYSIS = os.path.join(REPO, "analysis")
if ANALYSIS not in sys.path:
    sys.path.insert(0, ANALYSIS)

STR = h5py.string_dtype("utf-8")


def _write_table(group: h5py.Group, columns: dict[str, tuple[np.ndarray, Any]]) -> None:
    """One 1-D dataset per column; dtype STR means variable-length UTF-8 strings."""
    lengths = {len(values) for values, _ in columns.values()}
    assert len(lengths) == 1, "columns of a table must have equal lengths"
    for name, (values, dtype) in columns.items():
        if dtype is STR:
            group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR)
        else:
            group.create_dataset(name, data=np.asarray(values, dtype=dtype))


def _stats(values: np.ndarray) -> tuple[float, float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"),) * 4
    return (float(v.mean()), float(np.percentile(v, 50)), float(np.percentile(v, 95)),
            float(v.max()))


def make_run_tables(spec: str, bits: float = 4.0, err: float = 0.05, *,
                    n_seq: int = 2, n_layers: int = 3, layers: list[int] | None = None,
                    hq: int = 4, hkv: int = 2, head_dim: int = 16,
                    steps: list[int] | None = None, seed: int = 0,
                    **_: Any) -> dict[str, pd.DataFrame]:
    """Synthetic steps/kv/aggregates tables for one run.

    err is the typical attention-output relative error (0 gives exactly 0 everywhere);
    bits the intended bits per cached element (the data/meta split is derived from it).
    """
    rng = np.random.default_rng(seed)
    layers = list(range(n_layers)) if layers is None else list(layers)
    steps = [8, 9, 10, 11, 12, 13] if steps is None else list(steps)
    group = hq // hkv

    rows = []
    for s in range(n_seq):
        for li, layer in enumerate(layers):
            for q in range(hq):
                for t in steps:
                    depth = li / max(1, len(layers) - 1)
                    growth = (t - steps[0]) / max(1, steps[-1] - steps[0])
                    base = err * (0.6 + 0.8 * depth) * (0.9 + 0.2 * growth)
                    e = 0.0 if err == 0 else base * float(rng.lognormal(0.0, 0.3))
                    rows.append((s, layer, q, q // group, t, e))
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    rel = a[:, 5].astype(np.float32)
    steps_df = pd.DataFrame({
        "sequence": a[:, 0].astype(np.int32), "layer": a[:, 1].astype(np.int32),
        "q_head": a[:, 2].astype(np.int32), "kv_head": a[:, 3].astype(np.int32),
        "step": a[:, 4].astype(np.int32), "rel_err": rel,
        "cosine": (1.0 - rel.astype(np.float64) ** 2 / 2).astype(np.float32),
        "mass_retained": (1.0 - np.minimum(3 * rel, 0.9)).astype(np.float32),
        "kl": (rel.astype(np.float64) ** 2 * 0.5).astype(np.float32),
    })

    kv_rows = []
    for s in range(n_seq):
        for li, layer in enumerate(layers):
            for h in range(hkv):
                for t in steps:
                    n_exact = t + 1
                    fp16 = 2 * 16 * head_dim * n_exact
                    total = fp16 * bits / 16.0
                    meta = int(round(total * 0.1))
                    data = int(round(total)) - meta
                    ke = 0.0 if err == 0 else err * 0.5 * float(rng.uniform(0.8, 1.2))
                    ve = 0.0 if err == 0 else err * 0.7 * float(rng.uniform(0.8, 1.2))
                    kv_rows.append((s, layer, h, t, n_exact, data, meta, fp16, ke, ve))
    k = list(zip(*kv_rows))
    kv_df = pd.DataFrame({
        "sequence": np.array(k[0], np.int32), "layer": np.array(k[1], np.int32),
        "kv_head": np.array(k[2], np.int32), "step": np.array(k[3], np.int32),
        "kept_tokens": np.array(k[4], np.int32), "data_bits": np.array(k[5], np.int64),
        "meta_bits": np.array(k[6], np.int64), "fp16_bits": np.array(k[7], np.int64),
        "key_err": np.array(k[8], np.float32), "value_err": np.array(k[9], np.float32),
    })

    agg = []
    for metric in ("rel_err", "cosine", "mass_retained", "kl", "key_err", "value_err"):
        df, head_col = ((kv_df, "kv_head") if metric in ("key_err", "value_err")
                        else (steps_df, "q_head"))
        agg.append((metric, "overall", -1, -1, len(df)) + _stats(df[metric]))
        for layer, sub in df.groupby("layer"):
            agg.append((metric, "layer", int(layer), -1, len(sub)) + _stats(sub[metric]))
        for (layer, head), sub in df.groupby(["layer", head_col]):
            agg.append((metric, "head", int(layer), int(head), len(sub)) + _stats(sub[metric]))
    agg_df = pd.DataFrame(agg, columns=["metric", "scope", "layer", "head", "count",
                                        "mean", "p50", "p95", "max"])
    return {"steps": steps_df, "kv": kv_df, "aggregates": agg_df}


def summary_row(run: int, spec: str, resolved: str, tables: dict[str, pd.DataFrame],
                seconds: float) -> dict[str, Any]:
    st, kv = tables["steps"], tables["kv"]
    data_bits = float(kv["data_bits"].sum())
    meta_bits = float(kv["meta_bits"].sum())
    fp16_bits = float(kv["fp16_bits"].sum())
    ratio = (data_bits + meta_bits) / fp16_bits
    f64 = lambda c: st[c].to_numpy(dtype=np.float64)  # noqa: E731
    return {
        "run": run, "spec": spec, "resolved": resolved,
        "rel_err_mean": float(f64("rel_err").mean()),
        "rel_err_p95": float(np.percentile(f64("rel_err"), 95)),
        "cosine_mean": float(f64("cosine").mean()),
        "mass_retained_mean": float(f64("mass_retained").mean()),
        "kl_mean": float(f64("kl").mean()),
        "key_err_mean": float(kv["key_err"].to_numpy(np.float64).mean()),
        "value_err_mean": float(kv["value_err"].to_numpy(np.float64).mean()),
        "data_bits": data_bits, "meta_bits": meta_bits, "fp16_bits": fp16_bits,
        "memory_ratio": ratio, "bits_per_element": 16.0 * ratio, "seconds": seconds,
    }


SUMMARY_DTYPES = {"run": np.int32, "spec": STR, "resolved": STR}


def write_fake_results(path: str | os.PathLike, runs: list[dict[str, Any]], *,
                       format: str = "kvsim-results", version: Any = 1,
                       attrs: dict[str, Any] | None = None,
                       summary_override: dict[str, list[Any]] | None = None) -> pd.DataFrame:
    """Write a results file with one run per entry of `runs`; returns /summary as written.

    Each entry is a dict with "spec" and optionally "bits", "err", "resolved",
    "seconds", "n_layers", "layers", "steps", "n_seq", "hq", "hkv", "seed".
    summary_override replaces whole /summary columns (after computing them).
    """
    tables = []
    rows = []
    for i, r in enumerate(runs):
        spec = r["spec"]
        resolved = r.get("resolved", f"{spec}(seed=0)")
        t = make_run_tables(**{"seed": i, **r})
        tables.append((spec, resolved, t))
        rows.append(summary_row(i, spec, resolved, t, r.get("seconds", 0.5 + i)))
    summary = pd.DataFrame(rows, columns=list(rows[0].keys()) if rows else
                           ["run", "spec", "resolved", "rel_err_mean", "rel_err_p95",
                            "cosine_mean", "mass_retained_mean", "kl_mean", "key_err_mean",
                            "value_err_mean", "data_bits", "meta_bits", "fp16_bits",
                            "memory_ratio", "bits_per_element", "seconds"])
    for col, values in (summary_override or {}).items():
        summary[col] = values

    root_attrs = {
        "format": format, "version": version, "kvsim_version": "0.1.0-test",
        "trace_path": "traces/synthetic.h5", "trace_id": "synthetic-0001",
        "model_name": "tiny-test-model", "num_runs": np.int64(len(runs)),
        "measured_steps": "all",
    }
    root_attrs.update(attrs or {})
    with h5py.File(path, "w") as f:
        for key, value in root_attrs.items():
            if value is None:
                continue
            f.attrs[key] = value
        # Tables track creation order, so they store their columns in schema order.
        g = f.create_group("summary", track_order=True)
        _write_table(g, {c: (summary[c].to_numpy(), SUMMARY_DTYPES.get(c, np.float64))
                         for c in summary.columns})
        rg = f.create_group("runs")
        for i, (spec, resolved, t) in enumerate(tables):
            run = rg.create_group(f"{i:04d}")
            run.attrs["spec"] = spec
            run.attrs["resolved"] = resolved
            run.attrs["stages"] = "+".join(p.split("(")[0] for p in spec.split("+"))
            run.attrs["seed"] = np.int64(0)
            for name, df in t.items():
                sub = run.create_group(name, track_order=True)
                _write_table(sub, {c: (df[c].to_numpy(),
                                       STR if c in ("metric", "scope") else df[c].dtype)
                                   for c in df.columns})
    return summary


# A typical sweep: fp16 baseline (error exactly 0), quantisers and an eviction policy.
TYPICAL_RUNS = [
    {"spec": "full", "bits": 16.0, "err": 0.0},
    {"spec": "quant(bits=8)", "bits": 8.25, "err": 0.0008},
    {"spec": "quant(bits=4,group=32)", "bits": 4.5, "err": 0.02},
    {"spec": "quant(bits=2,group=32)", "bits": 2.5, "err": 0.15},
    {"spec": "evict(keep=0.5)", "bits": 8.0, "err": 0.06},
    {"spec": "evict(keep=0.25,sink=4,recent=16)+quant(bits=4,group=64,axis=channel)",
     "bits": 1.1, "err": 0.3},
]


@pytest.fixture
def write_fake():
    return write_fake_results


@pytest.fixture
def typical_file(tmp_path):
    path = tmp_path / "results.h5"
    summary = write_fake_results(path, TYPICAL_RUNS)
    return path, summary


def pytest_configure(config):
    config.addinivalue_line("markers", "model: loads a real model (SmolLM2 or Gemma 3) on the CPU")


def pytest_terminal_summary(terminalreporter):
    """Print what test_doc_commands ran and skipped (and why), when it ran."""
    module = sys.modules.get("test_doc_commands")
    lines = getattr(module, "SUMMARY", None)
    if lines:
        ran = sum(1 for line in lines if line.startswith("RUN"))
        skipped = sum(1 for line in lines if line.startswith("SKIP"))
        terminalreporter.section(f"doc commands: {ran} run, {skipped} skipped")
        for line in lines:
            terminalreporter.write_line(line)
