"""Tests for analysis/closed_loop_study.py (experiment 07: replay vs closed loop), on
synthetic data whose answers are known by construction."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

import closed_loop_study as cls


def _brute_kendall(x, y):
    """Kendall's tau-a by enumerating the pairs (no ties in the inputs used)."""
    s = 0
    pairs = list(itertools.combinations(range(len(x)), 2))
    for i, j in pairs:
        s += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return s / len(pairs)


def test_ranks_average_ties():
    assert cls.average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert cls.average_ranks([3, 1, 2]).tolist() == [3, 1, 2]
    assert cls.average_ranks([[5, 5, 1], [0, 1, 2]]).tolist() == [[2.5, 2.5, 1], [1, 2, 3]]


def test_spearman_and_kendall_known_values():
    x = np.arange(1.0, 6.0)
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    # rho = 1 - 6 sum d^2 / (n (n^2 - 1)) without ties: d = (1, 1, 1, 1, 0)
    assert cls.spearman(x, y) == pytest.approx(1 - 6 * 4 / (5 * 24))
    # two discordant pairs of ten: (8 - 2) / 10
    assert cls.kendall_tau_b(x, y) == pytest.approx(0.6)
    assert cls.spearman(x, -x) == pytest.approx(-1.0)
    assert cls.spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, not linear
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=12), rng.normal(size=12)
    assert cls.kendall_tau_b(a, b) == pytest.approx(_brute_kendall(a, b))
    assert np.isnan(cls.spearman(x, np.ones(5)))  # constant side


def test_kendall_tau_b_with_ties():
    x = np.array([1.0, 2.0, 2.0, 3.0])
    y = np.array([1.0, 2.0, 3.0, 4.0])
    # 6 pairs, 1 tied in x; concordant 5, discordant 0: 5 / sqrt(5 * 6)
    assert cls.kendall_tau_b(x, y) == pytest.approx(5 / np.sqrt(30))


def test_cross_family_tau_separates_calibration_from_order():
    # each family is perfectly ordered, but family B's replay error is larger while its
    # live damage is smaller: every cross-family pair is discordant
    x = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    y = np.array([1.0, 2.0, 3.0, 0.1, 0.2, 0.3])
    fam = np.array(["A"] * 3 + ["B"] * 3)
    assert cls.spearman(x[:3], y[:3]) == pytest.approx(1.0)
    assert cls.spearman(x[3:], y[3:]) == pytest.approx(1.0)
    assert cls.cross_family_tau(x, y, fam) == pytest.approx(-1.0)
    assert cls.discordant_cross_pairs(x, y, fam) == (9, 9)
    # all pairs: 6 concordant (within), 9 discordant (across)
    assert cls.kendall_tau_b(x, y) == pytest.approx((6 - 9) / 15)


def test_family():
    assert cls.family("full") == "full"
    assert cls.family("snapkv:ratio=0.5") == "evict"
    assert cls.family("kivi:bits=2") == "quantize"
    assert cls.family("minicache:gamma=0.2") == "merge"
    assert cls.family("h2o:heavy=0.1,recent=0.1+kivi:bits=4") == "composition"
    assert cls.family("oracle:ratio=0.1") == "reference"
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        cls.family("nope:x=1")


def _synthetic_study(n_cfg: int = 12, n_prompts: int = 6, noise: float = 0.0, seed: int = 0,
                     models=("m1", "m2")) -> pd.DataFrame:
    """Rows per (model, spec, sequence): eviction configs whose damage is 4x their mass lost,
    quantization configs with a larger rel err than any eviction config but a twentieth of it as
    damage: rel err orders each family right and the families wrong."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for c in range(n_cfg):
            evict = c % 2 == 0
            spec = f"snapkv:ratio={c}" if evict else f"kivi:bits={c}"
            level = (c + 1) / n_cfg
            for p in range(n_prompts):
                jitter = 1 + noise * rng.normal()
                mass = 0.3 * level * jitter if evict else 0.0
                rel = 0.5 * level * jitter if evict else (0.4 * level + 0.5) * jitter
                delta = 4 * mass if evict else 0.05 * rel
                rows.append({"model": model, "spec": spec, "sequence": p, "rel_err_mean": rel,
                             "mass_lost": mass, "one_minus_cosine": rel ** 2 / 2, "value_err": rel,
                             "key_err": rel, "delta_nll": delta})
    d = pd.DataFrame(rows)
    d["family"] = [cls.family(s) for s in d["spec"]]
    return d


def test_bootstrap_interval_noiseless_and_null():
    rows = _synthetic_study()
    rows["perfect"] = rows["delta_nll"] ** 2  # a monotone function of the outcome
    panel = cls.make_panel(rows[rows["model"] == "m1"], "perfect", "delta_nll")
    point, lo, hi = cls.bootstrap_stat(panel, cls.STATS["spearman"], n_boot=200)
    assert (point, lo, hi) == pytest.approx((1.0, 1.0, 1.0))
    # an unrelated metric: the interval is wide and holds 0
    rng = np.random.default_rng(3)
    rows["noise"] = rng.normal(size=len(rows))
    panel = cls.make_panel(rows, "noise", "delta_nll")
    point, lo, hi = cls.bootstrap_stat(panel, cls.STATS["spearman"], n_boot=300, seed=1)
    assert lo < 0 < hi and lo <= point <= hi and hi - lo > 0.3


def test_bootstrap_resamples_prompts_within_model():
    # configs identical across prompts: resampling prompts changes nothing, resampling configs
    # keeps the point inside the interval; with prompt noise the interval widens
    clean = _synthetic_study(noise=0.0)
    noisy = _synthetic_study(noise=0.5, seed=2)
    width = []
    for rows in (clean, noisy):
        panel = cls.make_panel(rows, "rel_err_mean", "delta_nll")
        assert panel.x.shape == (24, 6)
        point, lo, hi = cls.bootstrap_stat(panel, cls.STATS["kendall"], n_boot=300)
        assert lo <= point <= hi
        width.append(hi - lo)
    assert width[1] > width[0]


def test_correlation_table_scopes_and_within_family():
    rows = _synthetic_study()
    t = cls.correlation_table(rows, ["rel_err_mean", "mass_lost"], ["delta_nll"], n_boot=50)
    assert set(t["scope"]) == {"m1", "m2", "pooled"}
    within = t[(t["family"] != "all") & (t["metric"] == "rel_err_mean")]
    # rel err orders each family perfectly...
    assert within["spearman"].to_numpy() == pytest.approx(np.ones(len(within)))
    # ...but every quantize config outranks every evict config by rel err while the damage
    # says otherwise for most pairs: across families the order is wrong in part
    overall = t[(t["family"] == "all") & (t["metric"] == "rel_err_mean") & (t["scope"] == "m1")]
    assert overall["cross_family_tau"].iloc[0] < overall["spearman"].iloc[0] < 1
    assert overall["configs"].iloc[0] == 12
    pooled = t[(t["family"] == "all") & (t["scope"] == "pooled")]
    assert (pooled["configs"] == 24).all()


def test_heldout_combined_beats_single_metrics_and_fits_nothing_it_scores():
    rows = _synthetic_study(noise=0.05, seed=4)
    out = cls.heldout_combined(rows, features=("rel_err_mean", "mass_lost"))
    cfg = cls.config_means(out)
    m2 = cfg[cfg["model"] == "m2"]
    rho_single = cls.spearman(m2["rel_err_mean"], m2["delta_nll"])
    rho_comb = cls.spearman(m2["combined_model_out"], m2["delta_nll"])
    assert rho_comb > rho_single + 0.1
    assert not out["combined_prompt_out"].isna().any()
    # the model-out metric of m2 does not depend on m2's outcomes
    shuffled = rows.copy()
    sel = shuffled["model"] == "m2"
    shuffled.loc[sel, "delta_nll"] = shuffled.loc[sel, "delta_nll"].to_numpy()[::-1]
    again = cls.heldout_combined(shuffled, features=("rel_err_mean", "mass_lost"))
    assert np.allclose(again.loc[sel, "combined_model_out"], out.loc[sel, "combined_model_out"])
    # the family-out metric of a family does not depend on that family's outcomes
    evict = rows["family"] == "evict"
    moved = rows.copy()
    moved.loc[evict, "delta_nll"] = moved.loc[evict, "delta_nll"].to_numpy()[::-1]
    again = cls.heldout_combined(moved, features=("rel_err_mean", "mass_lost"))
    assert np.allclose(again.loc[evict, "combined_family_out"], out.loc[evict, "combined_family_out"])
    assert not np.allclose(again.loc[~evict, "combined_family_out"], out.loc[~evict, "combined_family_out"])
    # the prompt-out metric of a prompt does not depend on that prompt's outcomes
    changed = rows.copy()
    sel0 = changed["sequence"] == 0
    changed.loc[sel0, "delta_nll"] = 0.0
    again = cls.heldout_combined(changed, features=("rel_err_mean", "mass_lost"))
    assert np.allclose(again.loc[sel0, "combined_prompt_out"], out.loc[sel0, "combined_prompt_out"])


def _closed_loop_frame() -> pd.DataFrame:
    """A /closed_loop table with the contract's columns (docs/results-format.md)."""
    rows = []
    for run in ["full", "snapkv:ratio=0.25", "kivi:bits=2"]:
        for seq, kind in [(0, "passkey"), (1, "needle"), (2, "continuation")]:
            bad = run != "full"
            rows.append({"run": run, "resolved": run, "model": "smollm2", "sequence": seq, "kind": kind,
                         "prompt_tokens": 100, "continuation_tokens": 16, "nll": 1.0 + 0.1 * bad,
                         "delta_nll": 0.1 * bad, "kl_mean": 0.05 * bad, "kl_p95": 0.2 * bad,
                         "top1_agreement": 1.0 - 0.1 * bad,
                         "answer_correct": -1 if kind == "continuation" else int(not (bad and seq == 0)),
                         "first_divergence": 3 if bad else -1, "token_agreement": 1.0 - 0.25 * bad,
                         "mean_cache_tokens": 50.0, "bits_per_token": 100.0, "seconds": 1.0})
    return pd.DataFrame(rows)


def test_closed_loop_per_sequence_orients_outcomes_as_damage():
    c = cls.closed_loop_per_sequence(_closed_loop_frame())
    snap = c[c["spec"] == "snapkv:ratio=0.25"].set_index("sequence")
    assert snap.loc[0, "accuracy_loss"] == 1 and snap.loc[1, "accuracy_loss"] == 0
    assert np.isnan(snap.loc[2, "accuracy_loss"])  # no answer
    assert snap.loc[0, "top1_miss"] == pytest.approx(0.1)
    assert snap.loc[0, "token_disagreement"] == pytest.approx(0.25)
    assert (c[c["spec"] == "full"]["accuracy_loss"].dropna() == 0).all()


def test_replay_per_sequence_from_result_frames():
    rng = np.random.default_rng(0)
    steps = pd.DataFrame({"run": np.repeat([0, 1], 40), "sequence": np.tile(np.repeat([0, 1], 20), 2),
                          "rel_err": rng.random(80), "cosine": rng.random(80),
                          "mass_retained": rng.random(80), "kl": rng.random(80),
                          "top1_agreement": rng.integers(0, 2, 80)})
    kv = pd.DataFrame({"run": np.repeat([0, 1], 4), "sequence": np.tile([0, 0, 1, 1], 2),
                       "key_err": rng.random(8), "value_err": rng.random(8),
                       "data_bits": [10, 30, 5, 5, 1, 1, 1, 1], "meta_bits": [0, 0, 10, 0, 0, 0, 0, 0],
                       "fp16_bits": [40, 40, 40, 40, 8, 8, 8, 8]})
    summary = pd.DataFrame({"run": [0, 1], "spec": ["full", "kivi:bits=2"]})
    r = cls.replay_per_sequence(summary, steps, kv).set_index(["spec", "sequence"])
    sel = steps[(steps["run"] == 1) & (steps["sequence"] == 0)]["rel_err"]
    assert r.loc[("kivi:bits=2", 0), "rel_err_p95"] == pytest.approx(np.percentile(sel, 95))
    assert r.loc[("kivi:bits=2", 0), "rel_err_geomean"] == pytest.approx(
        np.exp(np.log(sel + cls.GEOMEAN_FLOOR).mean()) - cls.GEOMEAN_FLOOR)
    assert r.loc[("full", 0), "memory_ratio"] == pytest.approx(40 / 80)
    assert r.loc[("full", 1), "memory_ratio"] == pytest.approx(20 / 80)
    steps.loc[steps["run"] == 1, "mass_retained"] = 1 - 1e-7  # float noise of a pure quantizer
    r2 = cls.replay_per_sequence(summary, steps, kv).set_index(["spec", "sequence"])
    assert (r2.loc["kivi:bits=2", "mass_lost"] == 0).all()
    assert r.loc[("full", 0), "mass_lost"] == pytest.approx(
        1 - steps[(steps["run"] == 0) & (steps["sequence"] == 0)]["mass_retained"].mean())


def test_disagreements_names_the_misranked_config():
    cfg = pd.DataFrame({"model": "m", "spec": ["a", "b", "c", "d"], "family": "evict",
                        "rel_err_mean": [1.0, 2.0, 3.0, 4.0], "delta_nll": [4.0, 1.0, 2.0, 3.0]})
    d = cls.disagreements(cfg, "rel_err_mean", "delta_nll", k=1)
    assert d["spec"].tolist() == ["a"] and d["rank_gap"].iloc[0] == -3


def test_complete_sequences_leaves_out_a_sequence_under_way():
    c = cls.closed_loop_per_sequence(_closed_loop_frame())
    assert cls.complete_sequences(c) == [0, 1, 2]
    partial = c[~((c["spec"] == "kivi:bits=2") & (c["sequence"] == 1))]
    assert cls.complete_sequences(partial) == [0, 2]


def test_interleave_spans_families_first():
    specs = ["full", "streamingllm:window=746", "streamingllm:window=496", "streamingllm:window=246",
             "kivi:bits=2", "kivi:bits=4", "h2o:heavy=0.1+kivi:bits=4"]
    out = cls.interleave(specs)
    assert sorted(out) == sorted(specs)
    assert out[:4] == ["full", "streamingllm:window=496", "kivi:bits=4", "h2o:heavy=0.1+kivi:bits=4"]
    assert out[4:] == ["streamingllm:window=746", "kivi:bits=2", "streamingllm:window=246"]
