"""Tests for analysis/kvsim_analysis.py (helpers of the experiments)."""

from __future__ import annotations

import os
import subprocess

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, write_fake_results

import kvsim_analysis as ka

SMALL_TRACE = os.path.join(REPO, "trace", "data", "smollm2_default.h5")
KVSIM = os.environ.get("KVSIM_BIN", os.path.join(REPO, "build", "sim", "kvsim"))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for x in np.unique(v):
        tie = v == x
        r[tie] = r[tie].mean()
    return r


def test_parse_spec():
    assert ka.parse_spec("full") == [("full", {})]
    assert ka.parse_spec("h2o:heavy=0.1,recent=0.2 + kivi:bits=2") == [
        ("h2o", {"heavy": 0.1, "recent": 0.2}), ("kivi", {"bits": 2})]
    assert ka.parse_spec("l2norm:keep_ratio=0.5,skip=[0,1,12]") == [
        ("l2norm", {"keep_ratio": 0.5, "skip": [0, 1, 12]})]
    assert ka.parse_spec("l2norm:skip=[]")[0][1]["skip"] == []
    assert ka.parse_spec("skvq:reorder=false,v_bits=1.5,meta=fp8")[0][1] == {
        "reorder": False, "v_bits": 1.5, "meta": "fp8"}


def test_load_summary_columns(tmp_path):
    p = tmp_path / "r.h5"
    write_fake_results(p, [{"spec": "kivi:bits=2,group=32", "bits": 3.0, "err": 0.1},
                           {"spec": "h2o:heavy=0.1+kivi:bits=4", "bits": 1.0, "err": 0.2}])
    s = ka.load_summary(p, "m")
    assert list(s["stages"]) == ["kivi", "h2o+kivi"]
    assert list(s["kivi.bits"]) == [2, 4]
    assert s["h2o.heavy"].iloc[1] == 0.1 and pd.isna(s["h2o.heavy"].iloc[0])
    assert np.allclose(s["mass_lost_mean"], 1 - s["mass_retained_mean"])
    assert (s["model"] == "m").all()


def test_counters(tmp_path):
    p = tmp_path / "r.h5"
    write_fake_results(p, [{"spec": "minicache"}, {"spec": "full"}])
    with h5py.File(p, "a") as f:
        g = f["runs/0000"].create_group("counters")
        g.create_dataset("name", data=np.array(["minicache.merged", "minicache.retained"], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        g.create_dataset("value", data=np.array([90.0, 10.0]))
    c = ka.counters(p)
    assert c[0] == {"minicache.merged": 90.0, "minicache.retained": 10.0}
    assert c[1] == {}


def test_interpolate_at():
    d = pd.DataFrame({"x": [3.0, 1.0, 2.0], "y": [30.0, 10.0, 20.0]})
    assert ka.interpolate_at(d, "x", "y", 1.5) == pytest.approx(15.0)
    assert np.isnan(ka.interpolate_at(d, "x", "y", 0.5))
    assert np.isnan(ka.interpolate_at(d, "x", "y", 3.5))


def _write_trace(path, K, Q, V, P, windows, scale=0.5):
    with h5py.File(path, "w") as f:
        L, hkv = K.shape[:2]
        f.attrs["attn_scale"] = scale
        f.attrs["num_q_heads"] = Q.shape[1]
        f.attrs["num_kv_heads"] = hkv
        f["layer_ids"] = np.arange(L, dtype=np.int32)
        f["sliding_window"] = np.array(windows, dtype=np.int32)
        g = f.create_group("sequences/000000")
        g.attrs["prompt_len"] = P
        g["k"], g["q"], g["v"] = K, Q, V


def test_key_norm_attention_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    L, hq, hkv, T, d, P = 2, 4, 2, 12, 8, 8
    K = rng.normal(size=(L, hkv, T, d)).astype(np.float32)
    Q = rng.normal(size=(L, hq, T, d)).astype(np.float32)
    V = rng.normal(size=(L, hkv, T, d)).astype(np.float32)
    path = tmp_path / "t.h5"
    _write_trace(path, K, Q, V, P, windows=[0, 9])
    d_ = ka.key_norm_attention(str(path), 0)
    expect: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {0: [], 1: []}
    for layer, W in ((0, 0), (1, 9)):
        for h in range(hkv):
            att = np.zeros(P)
            for qh in (2 * h, 2 * h + 1):
                for t in range(P, T):
                    lo = 0 if W == 0 else t - W + 1
                    s = 0.5 * K[layer, h, lo:t + 1] @ Q[layer, qh, t]
                    p = np.exp(s - s.max())
                    p /= p.sum()
                    full = np.zeros(T)
                    full[lo:t + 1] = p
                    att += full[:P]
            att /= 2 * (T - P)
            rows = d_[(d_["layer"] == layer) & (d_["kv_head"] == h)]
            first = 0 if W == 0 else T - W
            assert list(rows["token"]) == list(range(first, P))
            assert np.allclose(rows["attention"], att[first:], atol=1e-6)
            assert np.allclose(rows["key_norm"], np.linalg.norm(K[layer, h, first:P], axis=1), atol=1e-5)
            expect[layer].append((rows["key_norm"].to_numpy(), att[first:]))
    c = ka.norm_attention_correlation(d_)
    assert list(c["layer"]) == [0, 1]
    for layer in (0, 1):
        pairs = expect[layer]
        row = c[c["layer"] == layer].iloc[0]
        assert row["pearson"] == pytest.approx(np.mean([_pearson(n, a) for n, a in pairs]),
                                               abs=1e-6)
        assert row["spearman"] == pytest.approx(
            np.mean([_pearson(_ranks(n), _ranks(a)) for n, a in pairs]), abs=1e-6)
    # skip_first drops the first tokens: layer 0 then correlates over tokens 2..P-1 only.
    c2 = ka.norm_attention_correlation(d_, skip_first=2)
    n, a = zip(*[(n[2:], a[2:]) for n, a in expect[0]])
    assert c2["pearson"].iloc[0] == pytest.approx(
        np.mean([_pearson(x, y) for x, y in zip(n, a)]), abs=1e-6)


def test_correlation_sign_on_constructed_data():
    n = 50
    norm = np.linspace(1, 2, n)
    df = pd.DataFrame({"layer": 0, "kv_head": 0, "token": np.arange(n), "key_norm": norm,
                       "attention": 1.0 / norm})
    c = ka.norm_attention_correlation(df)
    assert c["spearman"].iloc[0] == pytest.approx(-1.0)
    assert c["pearson"].iloc[0] < -0.9


def test_adjacent_layer_cosine(tmp_path):
    rng = np.random.default_rng(1)
    K0 = rng.normal(size=(1, 2, 5, 4)).astype(np.float32)
    K = np.concatenate([K0, 3 * K0, -K0], axis=0)           # layer1 = 3*layer0, layer2 = -layer0
    V = np.concatenate([K0, K0, K0], axis=0)
    Q = rng.normal(size=(3, 2, 5, 4)).astype(np.float32)
    path = tmp_path / "t.h5"
    _write_trace(path, K, Q, V, 3, windows=[0, 0, 0])
    c = ka.adjacent_layer_cosine(str(path))
    assert list(c["layer"]) == [1, 2]
    assert c["cos_k"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert c["cos_k"].iloc[1] == pytest.approx(-1.0, abs=1e-5)
    assert c["angle_k"].iloc[1] == pytest.approx(1.0, abs=1e-3)
    assert c["cos_v"].iloc[1] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.skipif(not os.path.exists(SMALL_TRACE), reason="committed small trace missing")
def test_on_committed_trace():
    d = ka.key_norm_attention(SMALL_TRACE, 0)
    assert set(d["layer"]) == {0, 15, 16, 28, 29}
    with h5py.File(SMALL_TRACE, "r") as f:
        g = f["sequences/000000"]
        P = int(g.attrs["prompt_len"])
        scale = float(f.attrs["attn_scale"])
        group = int(f.attrs["num_q_heads"]) // int(f.attrs["num_kv_heads"])
        layer_ids = [int(v) for v in f["layer_ids"][()]]
        li = layer_ids.index(16)
        K = g["k"][li].astype(np.float64)
        Q = g["q"][li].astype(np.float64)
    T = K.shape[1]
    # Layer 16, KV head 1, recomputed query by query (the trace has no sliding window).
    h = 1
    att = np.zeros(P)
    for qh in range(h * group, (h + 1) * group):
        for t in range(P, T):
            s = scale * K[h, :t + 1] @ Q[qh, t]
            p = np.exp(s - s.max())
            att += (p / p.sum())[:P]
    att /= group * (T - P)
    rows = d[(d["layer"] == 16) & (d["kv_head"] == h)]
    assert list(rows["token"]) == list(range(P))
    np.testing.assert_allclose(rows["attention"], att, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(rows["key_norm"], np.linalg.norm(K[h, :P], axis=1), rtol=1e-4)
    # Per (layer, head), the attention on the prompt is a fraction of each decode query's
    # mass: positive and below 1 (the decode tokens get the rest).
    mass = d.groupby(["layer", "kv_head"])["attention"].sum()
    assert ((mass > 0.05) & (mass < 1.0)).all(), mass
    c = ka.adjacent_layer_cosine(SMALL_TRACE)
    assert list(c["layer"]) == [16, 29]   # only stored layers adjacent in the model


@pytest.mark.skipif(not (os.path.exists(SMALL_TRACE) and os.access(KVSIM, os.X_OK)),
                    reason="needs the committed small trace and a built kvsim (KVSIM_BIN)")
def test_load_summary_and_counters_on_a_real_replay(tmp_path):
    out = tmp_path / "r.h5"
    specs = ["full", "kivi:bits=2", "kivi:bits=4", "h2o:heavy=0.1,recent=0.1"]
    cmd = [KVSIM, "replay", "-t", SMALL_TRACE, "--sequences", "0", "--threads", "1",
           "-q", "-o", str(out)] + [a for sp in specs for a in ("-p", sp)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    s = ka.load_summary(out).set_index("spec")
    assert list(s.index) == specs
    # The summary matches the raw per-step and per-kv records, recomputed here.
    with h5py.File(out, "r") as f:
        for i, spec in enumerate(specs):
            run = f[f"runs/{i:04d}"]
            rel = run["steps/rel_err"][()].astype(np.float64)
            mass = run["steps/mass_retained"][()].astype(np.float64)
            stored = (run["kv/data_bits"][()].sum() + run["kv/meta_bits"][()].sum())
            fp16 = run["kv/fp16_bits"][()].sum()
            assert s.loc[spec, "rel_err_mean"] == pytest.approx(rel.mean(), rel=1e-9), spec
            assert s.loc[spec, "mass_lost_mean"] == pytest.approx(1 - mass.mean(), abs=1e-6)
            assert s.loc[spec, "memory_ratio"] == pytest.approx(stored / fp16, rel=1e-12)
    # Known orderings: fp16 is exact and keeps everything; 2-bit KIVI is smaller and worse
    # than 4-bit; quantizers keep every token, H2O evicts and loses attention mass.
    assert s.loc["full", "rel_err_mean"] == 0
    assert s.loc["full", "mass_lost_mean"] == pytest.approx(0, abs=1e-6)   # float sums
    assert s.loc["full", "memory_ratio"] == 1
    assert s.loc["kivi:bits=2", "rel_err_mean"] > s.loc["kivi:bits=4", "rel_err_mean"] > 0
    assert s.loc["kivi:bits=2", "bits_per_element"] < s.loc["kivi:bits=4", "bits_per_element"]
    assert s.loc["kivi:bits=2", "mass_lost_mean"] == pytest.approx(0, abs=1e-6)
    assert s.loc["h2o:heavy=0.1,recent=0.1", "mass_lost_mean"] > 1e-3
    assert s.loc["h2o:heavy=0.1,recent=0.1", "memory_ratio"] < 0.5
    assert s["kivi.bits"].tolist()[1:3] == [2, 4] and pd.isna(s.loc["full", "kivi.bits"])
    assert s["stages"].tolist() == ["full", "kivi", "kivi", "h2o"]
    c = ka.counters(out)
    assert c[0] == {} and c[1] == {}
    assert set(c[3]) == {"h2o.evicted_tokens"} and c[3]["h2o.evicted_tokens"] > 0
