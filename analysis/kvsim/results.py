"""Replay from Python and its results as pandas DataFrames.

:func:`replay` runs the C++ engine and returns :class:`Results`; :meth:`Results.save`
writes the results file of ``kvsim replay`` (docs/results-format.md, the same C++ writer)
and :func:`load_results` reads one back into the same frames.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from . import _core
from .trace import Trace

try:  # installed beside the package by `pip install .`; in the repository, analysis/
    import kvsim_results as _file_loader
except ImportError:  # pragma: no cover - an editable install run from elsewhere
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import kvsim_results as _file_loader

#: {table: [(column, type, unit, summarised)]} in schema order (sim/records.h, /summary).
SCHEMA: dict[str, list[tuple[str, str, str, bool]]] = _core.schema_columns()
#: The columns of each frame, in order (the record frames start with `run`).
COLUMNS: dict[str, list[str]] = {
    "summary": [c[0] for c in SCHEMA["summary"]],
    "steps": ["run"] + [c[0] for c in SCHEMA["steps"]],
    "kv": ["run"] + [c[0] for c in SCHEMA["kv"]],
    "counters": ["run", "name", "value"],
}


def _with_units(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    frame.attrs = {"units": {c[0]: c[2] for c in SCHEMA.get(table, []) if c[2]}}
    return frame


def _per_layer(steps: pd.DataFrame, kv: pd.DataFrame) -> pd.DataFrame:
    """Per (run, layer): the mean of every summarised steps and kv column."""
    step_metrics = [c[0] for c in SCHEMA["steps"] if c[3] and c[0] in steps]
    kv_metrics = [c[0] for c in SCHEMA["kv"] if c[3] and c[0] in kv]
    a = steps.groupby(["run", "layer"], sort=True)[step_metrics].mean()
    b = kv.groupby(["run", "layer"], sort=True)[kv_metrics].mean()
    return a.join(b, how="outer").reset_index()


class Results:
    """The results of a replay (or of a results file) as DataFrames.

    summary    one row per run (policy): run, spec, resolved, then the /summary columns
    steps      fidelity per (run, sequence, layer, query head, measured step)
    kv         memory and reconstruction per (run, sequence, layer, kv head, measured step)
    counters   the policies' counters in long form: run, name, value
    per_layer  per (run, layer): the mean of every summarised steps and kv column

    Columns come in schema order (docs/results-format.md), strings as ``str``.
    """

    def __init__(self, summary: pd.DataFrame, steps: pd.DataFrame, kv: pd.DataFrame,
                 counters: pd.DataFrame, attrs: dict[str, Any], *,
                 output: Any = None, path: str | None = None) -> None:
        self.summary = _with_units(summary, "summary")
        self.steps = _with_units(steps, "steps")
        self.kv = _with_units(kv, "kv")
        self.counters = counters
        self.per_layer = _per_layer(steps, kv)
        self.attrs = attrs
        self.path = path
        self._output = output  # the engine's runs, when replayed in this process

    @classmethod
    def _from_output(cls, output: Any) -> Results:
        attrs = {"trace_path": output.trace_path, "model_name": output.model_name,
                 "measured_steps": output.measured_steps, "kvsim_version": _core.__version__}
        return cls(pd.DataFrame(output.summary()), pd.DataFrame(output.steps()),
                   pd.DataFrame(output.kv()), pd.DataFrame(output.counters()), attrs,
                   output=output)

    def save(self, path: str | os.PathLike) -> None:
        """Write the results file (docs/results-format.md) with the C++ writer of
        ``kvsim replay``, atomically; a loaded file is copied."""
        path = os.fspath(path)
        if self._output is not None:
            self._output.save(path)
            return
        tmp = f"{path}.tmp.{os.getpid()}"
        shutil.copyfile(self.path, tmp)
        os.replace(tmp, path)

    def frontier(self, x: str = "bits_per_element", y: str = "rel_err_mean") -> pd.DataFrame:
        """The Pareto frontier of the summary (lower x and lower y are better), sorted by x."""
        import kvsim_tables  # beside kvsim_results
        return kvsim_tables.pareto_frontier(self.summary, x, y)

    def __repr__(self) -> str:
        return f"Results({len(self.summary)} run(s): {', '.join(self.summary['spec'])})"


def _concat_runs(runs: dict[int, dict[str, pd.DataFrame]], table: str) -> pd.DataFrame:
    parts = []
    for index in sorted(runs):
        frame = runs[index][table].copy()
        frame.insert(0, "run", np.int64(index))
        parts.append(frame)
    if not parts:
        return pd.DataFrame({c: [] for c in COLUMNS[table]})
    return pd.concat(parts, ignore_index=True)


def load_results(path: str | os.PathLike) -> Results:
    """Read a results file (``kvsim replay``, ``kvsim sweep`` or :meth:`Results.save`) into
    the frames :func:`replay` returns. Raises FileNotFoundError or ValueError (not a
    results file, wrong version) as analysis/kvsim_results.py does."""
    loaded = _file_loader.load_results(path)
    rows = [(run, name, value) for run in sorted(loaded.counters)
            for name, value in loaded.counters[run].items()]
    counters = pd.DataFrame({"run": np.array([r[0] for r in rows], dtype=np.int64),
                             "name": pd.Series([r[1] for r in rows], dtype=object),
                             "value": np.array([r[2] for r in rows], dtype=np.float64)})
    summary = loaded.summary.copy()
    summary.attrs = {}
    return Results(summary, _concat_runs(loaded.runs, "steps"), _concat_runs(loaded.runs, "kv"),
                   counters, dict(loaded.attrs), path=os.fspath(path))


def _progress_callback(progress: bool | None) -> tuple[Callable[[int, int], None] | None,
                                                       Callable[[], None]]:
    """A (done, total) callback drawing a tqdm bar, and its closer. progress=None: a bar
    when tqdm is installed and stderr is a terminal or this is a notebook."""
    if progress is False:
        return None, lambda: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True needs tqdm (pip install tqdm)") from None
        return None, lambda: None
    if progress is None and not (sys.stderr.isatty() or "ipykernel" in sys.modules):
        return None, lambda: None
    bar = tqdm(desc="replay", unit="unit")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return update, bar.close


def replay(trace: Trace | str | os.PathLike, specs: str | Iterable[str], *,
           measure: str = "auto", sequences: Iterable[int] | None = None, threads: int = 0,
           seed: int = 0, progress: bool | None = None) -> Results:
    """Replay ``trace`` through every policy spec, as ``kvsim replay`` does.

    trace: a :class:`Trace` or a path. specs: one spec or several (C++ policies and
    scorers registered with :func:`kvsim.scorer`). measure: "auto", "all", "stride=N" or
    "last=N". sequences: indices (default all). threads: worker threads (0 = all cores).
    seed: for randomised policies. progress: a tqdm bar (None: when attached to a terminal
    or notebook and tqdm is installed).

    The records are bit-identical to ``kvsim replay`` with the same options. Raises
    kvsim.ConfigError, kvsim.FormatError, ... with the CLI's messages, and any exception a
    Python scorer raised.
    """
    reader = trace._reader if isinstance(trace, Trace) else _core.TraceReader(os.fspath(trace))
    spec_list = [specs] if isinstance(specs, str) else [getattr(s, "text", s) for s in specs]
    update, close = _progress_callback(progress)
    try:
        output = _core.replay(reader, spec_list, measure=measure,
                              sequences=list(sequences or []), threads=threads, seed=seed,
                              progress=update)
    finally:
        close()
    return Results._from_output(output)
