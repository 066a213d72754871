"""The closed-loop results file (docs/results-format.md, "Closed-loop results").

One HDF5 file: the table `/closed_loop`, one dataset per column (attributes `unit`, `doc`;
the group's `columns` attribute gives the order), one row per (run, sequence), and file
attributes naming what produced it. The whole file is rewritten, to a temporary name then
renamed, after every finished row (a checkpoint), so that a killed run leaves a complete
file and a rerun with the same arguments skips the rows it holds.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import pandas as pd

from .outcomes import Outcome

__all__ = ["COLUMNS", "FORMAT", "load_closed_loop", "read_rows", "write_rows"]

FORMAT = "kvsim-closed-loop"
VERSION = 1

#: column -> (unit, doc), in Outcome's order.
COLUMNS: dict[str, tuple[str, str]] = {
    "run": ("", "the policy spec as given"),
    "resolved": ("", "the canonical spec, every parameter"),
    "model": ("", "the live model (smollm2, gemma3-270m)"),
    "sequence": ("", "sequence index in the prompts trace"),
    "kind": ("", "the prompt's kind in the trace (passkey, needle, ...)"),
    "prompt_tokens": ("tokens", "P, the prompt's tokens (prefilled)"),
    "continuation_tokens": ("tokens", "tokens scored teacher-forced: the trace's continuation "
                            "after its first token (T - P - 1)"),
    "nll": ("nats", "mean negative log-likelihood of the scored continuation tokens, "
            "teacher-forced, compression active from the prefill's cache on"),
    "delta_nll": ("nats", "nll minus full's nll on the same sequence"),
    "kl_mean": ("nats", "mean over the scored positions of KL(full || policy) of the "
                "next-token distributions"),
    "kl_p95": ("nats", "95th percentile of that KL over the scored positions"),
    "top1_agreement": ("fraction", "scored positions where the policy's most likely next "
                       "token is full's"),
    "answer_correct": ("", "free greedy generation contains the answer: 1/0; -1 when the "
                       "sequence has no answer"),
    "first_divergence": ("tokens", "index of the first generated token that differs from "
                         "full's greedy generation; -1 when none"),
    "token_agreement": ("fraction", "generated positions equal to full's"),
    "mean_cache_tokens": ("tokens", "cache rows per (layer, kv head), mean over the "
                          "teacher-forced decode steps"),
    "memory_bits": ("bits", "bits the policy holds (data + metadata, every layer and kv "
                    "head), mean over the teacher-forced decode steps"),
    "bits_per_token": ("bits", "memory_bits per token of the sequence so far (held bits / "
                       "(t + 1)), mean over the steps"),
    "memory_ratio": ("fraction", "held bits / bits of the uncompressed fp16 cache (clipped to "
                     "each layer's window), mean over the steps"),
    "generated_text": ("", "the free greedy generation, decoded"),
    "seconds": ("s", "wall time of the row: its teacher-forced and generation passes"),
}
assert list(COLUMNS) == [f.name for f in fields(Outcome)], "COLUMNS must follow Outcome"
_TYPES = {f.name: str(f.type) for f in fields(Outcome)}  # "str", "int" or "float"


def _string() -> Any:
    import h5py
    return h5py.string_dtype()


_DTYPES = {"str": _string, "int": lambda: np.int64, "float": lambda: np.float64}


def read_rows(path: str) -> tuple[dict[str, Any], list[Outcome]]:
    """(file attributes, rows) of a closed-loop file."""
    import h5py
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a closed-loop results file (format "
                             f"{attrs.get('format')!r}, expected {FORMAT!r})")
        g = f["closed_loop"]
        cols = {c: g[c][()] for c in COLUMNS}
    n = len(cols["run"])
    rows = []
    for i in range(n):
        values = {c: cols[c][i] for c in COLUMNS}
        rows.append(Outcome(**{c: (v.decode() if isinstance(v, bytes) else v.item())
                               for c, v in values.items()}))
    return attrs, rows


def write_rows(path: str, attrs: dict[str, Any], rows: list[Outcome]) -> None:
    """Writes the whole file atomically (a temporary name next to `path`, then renamed)."""
    import h5py
    from kvsim_figures import atomic_write  # the package's one temp-then-rename helper

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            for k, v in attrs.items():
                f.attrs[k] = v
            g = f.create_group("closed_loop")
            g.attrs["columns"] = json.dumps(list(COLUMNS))
            table = [asdict(r) for r in rows]
            for name, (unit, doc) in COLUMNS.items():
                values = [r[name] for r in table]
                data = np.array(values, dtype=_DTYPES[_TYPES[name]]())
                ds = g.create_dataset(name, data=data)
                ds.attrs["unit"] = unit
                ds.attrs["doc"] = doc

    atomic_write(os.fspath(path), write)


def load_closed_loop(path: str | os.PathLike) -> pd.DataFrame:
    """The `/closed_loop` table of a file written by ``python -m kvsim.live``, one row per
    (run, sequence); the file's attributes are in ``DataFrame.attrs``."""
    attrs, rows = read_rows(os.fspath(path))
    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(COLUMNS))
    frame.attrs.update(attrs)
    return frame
