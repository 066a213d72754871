"""Traces (docs/trace-format.md): open one, read its layers as NumPy arrays, or write a
synthetic one."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from . import _core

EMBEDDED_TRACE = "smollm2_default.h5"


class Layer(NamedTuple):
    """One stored layer of one sequence, float32: q [Hq, T, d], k and v [Hkv, T, d]."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray


class Trace:
    """An opened, schema-checked trace. ``meta`` holds the file's metadata (model_name,
    layer_ids, num_q_heads, num_kv_heads, head_dim, attn_scale, ...)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._reader = _core.TraceReader(os.fspath(path))
        self.meta: dict[str, Any] = self._reader.meta

    @property
    def path(self) -> str:
        return self._reader.path

    @property
    def num_sequences(self) -> int:
        return self._reader.num_sequences

    def sequence(self, index: int) -> tuple[int, int]:
        """(num_tokens, prompt_len) of sequence ``index``."""
        return self._reader.sequence(index)

    def layer(self, sequence: int, layer: int) -> Layer:
        """The Q, K, V of one layer (its original id, one of ``meta["layer_ids"]``),
        converted once from the stored dtype to float32; the arrays share that buffer."""
        ids = self.meta["layer_ids"]
        if layer not in ids:
            raise _core.ConfigError(f"layer {layer} is not stored in {self.path} "
                                    f"(stored: {ids})")
        return Layer(*self._reader.read_layer(sequence, ids.index(layer)))

    def token_ids(self, sequence: int) -> np.ndarray:
        """The sequence's token ids (int32)."""
        return self._reader.token_ids(sequence)

    def __repr__(self) -> str:
        m = self.meta
        return (f"Trace({self.path!r}: {m['model_name']}, {self.num_sequences} sequence(s), "
                f"layers {m['layer_ids']}, {m['num_q_heads']}/{m['num_kv_heads']} heads, "
                f"d={m['head_dim']})")


def open_trace(path: str | os.PathLike) -> Trace:
    """Open a trace file; raises kvsim.FormatError (alias TraceFormatError) when it does
    not follow the format, kvsim.IoError when it cannot be read."""
    return Trace(path)


def synth(path: str | os.PathLike, preset: str = "default", **options: Any) -> Trace:
    """Write a synthetic trace (``kvsim synth``: presets "default", "tiny", "bench"; options
    as its flags with '_' for '-': seed, sequences, layers, keep_layers, q_heads, kv_heads,
    head_dim, tokens, prompt_len, outliers, sinks, sliding_window, sliding_every, dtype,
    gzip) and open it."""
    _core.synth(os.fspath(path), preset, options)
    return Trace(path)


def embedded_trace() -> str:
    """The path of the embedded default trace (SmolLM2-135M-Instruct, 3 sequences, layers
    0, 15, 16, 28, 29): the installed copy, or the repository's trace/data/."""
    from . import __path__ as package_dirs  # every folder of the package (see __init__)
    for folder in package_dirs:
        candidates = [os.path.join(folder, "data", EMBEDDED_TRACE),
                      os.path.join(folder, "..", "..", "trace", "data", EMBEDDED_TRACE)]
        for path in candidates:
            if os.path.exists(path):
                return os.path.normpath(path)
    raise FileNotFoundError(f"the embedded trace {EMBEDDED_TRACE} is not installed")
