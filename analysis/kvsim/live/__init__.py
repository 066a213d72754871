"""The live mode (docs/closed-loop.md): the C++ policies hold a live model's KV cache.

A Hugging Face model (SmolLM2-135M-Instruct or Gemma 3 270M, float32 on the CPU) runs with
its attention reading, at every layer and decode step, the cache that a kvsim policy keeps
(the same C++ pipeline as replay), so that errors compound as they would in a deployment.
The outcomes per (policy, sequence) -- teacher-forced NLL, KL and top-1 agreement against
`full`, free greedy generation's answer and agreement -- go to an HDF5 table::

    import kvsim.live as live
    lm = live.load_model("smollm2", threads=2)
    row = live.evaluate(lm, "prompts.h5", "snapkv:ratio=0.5", sequence=0)
    live.run(lm, "prompts.h5", ["snapkv:ratio=0.5", "kivi:bits=2"], "closed.h5")
    frame = live.load_closed_loop("closed.h5")

The command line is ``python -m kvsim.live`` (``python -m kvsim.live --help``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Sequence

from .. import _core
from .model import MODELS, LiveModel, load_model
from .outcomes import (FULL, LIVE_DTYPE, Outcome, PromptTrace, Reference, evaluate,
                       full_reference, open_prompts)
from .store import COLUMNS, load_closed_loop, read_rows, write_rows

__all__ = ["COLUMNS", "LiveModel", "MODELS", "Outcome", "PromptTrace", "Reference",
           "evaluate", "full_reference", "load_closed_loop", "load_model", "open_prompts",
           "run", "sweep_specs"]


def sweep_specs(path: str) -> list[str]:
    """The policy specs of a sweep file's grids (the YAML of ``kvsim sweep``, expanded by
    its C++ parser; the file's traces are not used)."""
    return [spec for spec, _ in _core.sweep_policies(os.fspath(path))]


def _check_specs(lm: LiveModel, trace: PromptTrace, specs: Sequence[str]) -> list[str]:
    """`full` first, then the given specs (a second `full` dropped); each checked against
    the model by building a session, so that a bad spec fails before any run."""
    runs = [FULL]
    for spec in specs:
        if _core.parse_spec(spec)["canonical"] == FULL:
            continue
        if spec in runs:
            raise _core.ConfigError(f"policy '{spec}' is given twice")
        runs.append(spec)
    for spec in runs:
        lm.session(spec, 0, 1, 1, calibration_trace=trace.path)
    return runs


def _identity(lm: LiveModel, trace: PromptTrace, runs: list[str], sequences: list[int],
              max_new_tokens: int) -> dict[str, object]:
    return {"model": lm.name, "model_source": lm.source, "trace": trace.path,
            "trace_sha256": trace.sha256, "trace_id": trace.meta["trace_id"],
            "runs": json.dumps(runs), "sequences": json.dumps(sequences),
            "max_new_tokens": max_new_tokens, "cache_dtype": LIVE_DTYPE,
            "kvsim_version": _core.__version__}


#: The attributes that must match for a rerun to continue an existing file.
_SAME = ("model", "trace_sha256", "runs", "sequences", "max_new_tokens", "cache_dtype")


def _resume(out: str, identity: dict[str, object]) -> list[Outcome]:
    if not os.path.exists(out):
        return []
    try:
        attrs, rows = read_rows(out)
    except (OSError, KeyError, ValueError) as e:
        raise _core.IoError(f"{out} exists but is no closed-loop results file ({e}); "
                            "give another --out or delete it") from e
    diff = [f"{k}: {attrs.get(k)!r} in the file, {identity[k]!r} now" for k in _SAME
            if str(attrs.get(k)) != str(identity[k])]
    if diff:
        raise _core.ConfigError(f"{out} holds a closed-loop run with other arguments ("
                                + "; ".join(diff) + "): give another --out or delete it")
    return rows


def _progress(done: int, total: int, label: str, elapsed: float) -> None:
    eta = elapsed / done * (total - done) if done else 0.0
    print(f"kvsim.live: {done}/{total} {label}  elapsed {elapsed:.0f}s  ETA {eta:.0f}s",
          file=sys.stderr, flush=True)


def run(model: LiveModel | str, trace: PromptTrace | str, specs: Sequence[str],
        out: str | os.PathLike, max_new_tokens: int = 32, sequences: Sequence[int] | None = None,
        threads: int | None = None,
        progress: Callable[[int, int, str, float], None] | None = _progress) -> list[Outcome]:
    """Every spec (and `full`, the reference, first) on every sequence, into `out`
    (docs/results-format.md, "Closed-loop results"). Resumable: rows already in `out` are
    kept and skipped; `out` written with other arguments is refused. Returns every row."""
    lm = model if isinstance(model, LiveModel) else load_model(model, threads=threads)
    trace = open_prompts(trace) if isinstance(trace, (str, os.PathLike)) else trace
    trace.check_model(lm)
    if max_new_tokens < 1:
        raise _core.ConfigError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    n = len(trace.sequences)
    seqs = list(range(n)) if sequences is None else [int(s) for s in sequences]
    for i, s in enumerate(seqs):
        if not 0 <= s < n:
            raise _core.ConfigError(f"sequence {s} out of range ({trace.path} has {n})")
        if s in seqs[:i]:
            raise _core.ConfigError(f"sequence {s} is given twice")
    runs = _check_specs(lm, trace, specs)
    out = os.fspath(out)
    identity = _identity(lm, trace, runs, seqs, max_new_tokens)
    rows = _resume(out, identity)
    done = {(r.run, r.sequence) for r in rows}
    total = len(runs) * len(seqs)
    start = time.perf_counter()
    finished = 0
    for s in seqs:
        todo = [r for r in runs if (r, s) not in done]
        if not todo:
            continue
        full_row, ref = full_reference(lm, trace, s, max_new_tokens)
        for spec in todo:
            row = full_row if spec == FULL else evaluate(lm, trace, spec, s, max_new_tokens,
                                                         reference=ref)
            rows.append(row)
            write_rows(out, identity, rows)
            finished += 1
            if progress:
                progress(len(done) + finished, total, f"{spec} seq {s}",
                         time.perf_counter() - start)
    order = {(r, s): i for i, (r, s) in enumerate((r, s) for s in seqs for r in runs)}
    rows.sort(key=lambda r: order[(r.run, r.sequence)])
    write_rows(out, identity, rows)
    return rows
