"""The deployed caches against the libraries' own code (docs/policies-quantize-more.md).

kvsim's `hf_quantized` (transformers' QuantizedCache with the HQQ and quanto backends) and
`fp8` (transformers' Fp8QuantizedLayer: e4m3, one per-tensor scale from the prompt) are
replayed over the embedded SmolLM2 trace, and the same tensors (one layer of one sequence,
float32) are fed to the library's cache layer: the prompt, then one token per decode step. At
every decode step the library returns what attention sees; its relative reconstruction error
per KV head must equal kvsim's `key_err` / `value_err` records to float rounding (1e-5
relative). A single element off by one quantization step moves the error by about 1e-4, so
this checks the dequantized keys and values themselves.

Runs where transformers and the backend are importable (hqq, optimum-quanto); skips cleanly
otherwise. CI does not install hqq or optimum-quanto (their dependencies pull the CUDA wheels
of torch); `pip install --no-deps hqq optimum-quanto einops termcolor` into a venv runs it.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KVSIM = os.environ.get("KVSIM_BIN", os.path.join(REPO, "build", "sim", "kvsim"))
TRACE = os.path.join(REPO, "trace", "data", "smollm2_default.h5")
sys.path.insert(0, os.path.join(REPO, "analysis"))


def _have(*mods: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in mods)
    except (ImportError, ValueError):
        return False


needs_kvsim = pytest.mark.skipif(not os.access(KVSIM, os.X_OK), reason=f"kvsim not built at {KVSIM}")


def _library_errors(layer, k: np.ndarray, v: np.ndarray, prompt_len: int) -> dict:
    """{(kv head, step): (key_err, value_err)} of the library's cache layer over k, v [H, T, d]."""
    import torch
    kt, vt = torch.tensor(k)[None], torch.tensor(v)[None]
    layer.update(kt[:, :, :prompt_len], vt[:, :, :prompt_len])
    out = {}
    for t in range(prompt_len, k.shape[1]):
        kr, vr = layer.update(kt[:, :, t:t + 1], vt[:, :, t:t + 1])
        for h in range(k.shape[0]):
            errs = []
            for got, ref in ((kr[0, h], k[h, :t + 1]), (vr[0, h], v[h, :t + 1])):
                diff = got.double().numpy() - ref.astype(np.float64)
                errs.append(np.sqrt((diff ** 2).sum() / (ref.astype(np.float64) ** 2).sum()))
            out[(h, t)] = tuple(errs)
    return out


def _kvsim_errors(tmp_path, spec: str, layer_id: int) -> dict:
    from kvsim_results import load_results
    out = tmp_path / "r.h5"
    r = subprocess.run([KVSIM, "replay", "-t", TRACE, "-p", spec, "--measure", "all", "--sequences", "0",
                        "-q", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    kv = load_results(out).runs[0]["kv"]
    kv = kv[kv["layer"] == layer_id]
    return {(int(h), int(s)): (float(ke), float(ve))
            for h, s, ke, ve in zip(kv["kv_head"], kv["step"], kv["key_err"], kv["value_err"])}


def _layer_tensors(slot: int):
    with h5py.File(TRACE) as f:
        g = f["sequences/000000"]
        return (g["k"][slot].astype(np.float32), g["v"][slot].astype(np.float32),
                int(g.attrs["prompt_len"]), int(f["layer_ids"][slot]))


def _compare(lib: dict, ours: dict) -> None:
    assert set(lib) == set(ours)
    worst = 0.0
    for key, (lk, lv) in lib.items():
        ok, ov = ours[key]
        for a, b in ((lk, ok), (lv, ov)):
            worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
    assert worst < 1e-5, f"relative difference of the errors up to {worst:.2e}"


CASES = [
    ("hqq", "hf_quantized:backend=hqq,bits=4,group=64,residual=32", dict(nbits=4, q_group_size=64, residual_length=32)),
    ("hqq", "hf_quantized:backend=hqq,bits=2,group=32,residual=16", dict(nbits=2, q_group_size=32, residual_length=16)),
    # (hqq 2-bit on axis 1 fails inside the library: its bit packing needs rows in fours)
    ("hqq", "hf_quantized:backend=hqq,bits=4,group=32,k_axis=1,v_axis=1,residual=16",
     dict(nbits=4, q_group_size=32, axis_key=1, axis_value=1, residual_length=16)),
    ("quanto", "hf_quantized:backend=quanto,bits=4,group=64,residual=32", dict(nbits=4, q_group_size=64, residual_length=32)),
    # axis -1 groups a channel over `group` rows of [Hkv * T, d]: 3 divides 3 heads x any T.
    ("quanto", "hf_quantized:backend=quanto,bits=2,group=3,k_axis=-1,v_axis=-1,residual=16",
     dict(nbits=2, q_group_size=3, axis_key=-1, axis_value=-1, residual_length=16)),
]


@needs_kvsim
@pytest.mark.parametrize("backend,spec,kwargs", CASES, ids=[c[1] for c in CASES])
def test_quantized_cache_matches_the_library(tmp_path, backend, spec, kwargs):
    module = {"hqq": "hqq", "quanto": "optimum.quanto"}[backend]
    if not _have("torch", "transformers", module.split(".")[0]) or not _have(module):
        pytest.skip(f"needs torch, transformers and {module}")
    from transformers import cache_utils
    layer_class = {"hqq": cache_utils.HQQQuantizedLayer, "quanto": cache_utils.QuantoQuantizedLayer}[backend]
    k, v, prompt_len, layer_id = _layer_tensors(0)
    _compare(_library_errors(layer_class(**kwargs), k, v, prompt_len), _kvsim_errors(tmp_path, spec, layer_id))


@needs_kvsim
def test_fp8_matches_transformers(tmp_path):
    if not _have("torch", "transformers"):
        pytest.skip("needs torch and transformers")
    from transformers import cache_utils
    if not hasattr(cache_utils, "Fp8QuantizedLayer"):
        pytest.skip("this transformers has no Fp8QuantizedLayer")
    k, v, prompt_len, layer_id = _layer_tensors(1)
    # The library casts without saturation: decode values beyond the prompt's amplitude would
    # become NaN there, so the check needs a layer where they stay within it.
    assert np.abs(k[:, prompt_len:]).max() <= np.abs(k[:, :prompt_len]).max()
    assert np.abs(v[:, prompt_len:]).max() <= np.abs(v[:, :prompt_len]).max()
    lib = _library_errors(cache_utils.Fp8QuantizedLayer(), k, v, prompt_len)
    _compare(lib, _kvsim_errors(tmp_path, "fp8:format=e4m3,scale=tensor", layer_id))
