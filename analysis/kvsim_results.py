"""Loading kvsim results files (docs/results-format.md, version 1).

    load_results(path) -> Results   the whole file: attributes, /summary, /sequences and
                                    every /runs/NNNN (steps, kv, aggregates, counters)
    read_table(group)  -> DataFrame one table group (equal-length 1-D datasets)

Column order: a table group's attribute `columns` (an array of names) gives the order
when present; otherwise the columns come in the order the file stores them (creation
order when the group tracks it, otherwise HDF5's name order). String columns and
string attributes come back as `str`, never `bytes`.

Shared by the report (kvsim_report.py) and the experiments' helpers (kvsim_analysis.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import pandas as pd

FORMAT_NAME = "kvsim-results"
FORMAT_VERSION = 1

# Columns of /summary that version 1 guarantees (schema order).
SUMMARY_COLUMNS = [
    "run", "spec", "resolved",
    "rel_err_mean", "rel_err_p95", "cosine_mean", "mass_retained_mean", "kl_mean",
    "key_err_mean", "value_err_mean",
    "data_bits", "meta_bits", "fp16_bits", "memory_ratio", "bits_per_element",
    "seconds",
]
STEPS_COLUMNS = ["sequence", "layer", "q_head", "kv_head", "step",
                 "rel_err", "cosine", "mass_retained", "kl"]
KV_COLUMNS = ["sequence", "layer", "kv_head", "step", "kept_tokens",
              "data_bits", "meta_bits", "fp16_bits", "key_err", "value_err"]
AGGREGATES_COLUMNS = ["metric", "scope", "layer", "head", "count",
                      "mean", "p50", "p95", "max"]
COUNTERS_COLUMNS = ["name", "value"]
# The tables of a run group; a run lacking one gets an empty table with these columns.
RUN_TABLES = {"steps": STEPS_COLUMNS, "kv": KV_COLUMNS, "aggregates": AGGREGATES_COLUMNS}

_FIELDS = ("path", "attrs", "summary", "runs", "run_attrs")


@dataclass
class Results:
    """A loaded results file. Also indexable like a dict: results["summary"].

    runs maps the run index to its tables {"steps", "kv", "aggregates"}; counters maps
    it to {counter name: value} (empty for runs without counters).
    """

    path: str
    attrs: dict[str, Any]
    summary: pd.DataFrame
    runs: dict[int, dict[str, pd.DataFrame]]
    run_attrs: dict[int, dict[str, Any]] = field(default_factory=dict)
    sequences: pd.DataFrame = field(default_factory=pd.DataFrame)  # /sequences, if present
    counters: dict[int, dict[str, float]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        return self.attrs[key]

    def __contains__(self, key: str) -> bool:
        return key in _FIELDS or key in self.attrs

    # The file attributes, as conveniences.
    @property
    def format(self) -> str | None:
        """The root attribute `format` (None when missing)."""
        return self.attrs.get("format")

    @property
    def version(self) -> int | None:
        """The root attribute `version` (None when missing)."""
        return self.attrs.get("version")


def plain(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value (bytes decoded to str, numpy
    scalars to Python scalars, arrays of more than one element to lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.shape == ():
            return plain(value[()])
        if value.size == 1:
            return plain(value.reshape(-1)[0])
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


_plain = plain  # the name it had in kvsim_report


def _read_column(ds: h5py.Dataset, where: str) -> np.ndarray:
    """One 1-D dataset as an array; strings (variable or fixed length) as str objects."""
    if ds.ndim != 1:
        raise ValueError(f"{where}: column is {ds.ndim}-D, expected 1-D")
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.array(ds.asstr(errors="replace")[()], dtype=object).reshape(-1)
    data = ds[()]
    if data.dtype.kind == "S":  # fixed-length byte strings without a string dtype
        return np.array([b.decode("utf-8", errors="replace") for b in data], dtype=object)
    if data.dtype.kind == "O":  # defensive: objects that are bytes
        return np.array([plain(v) for v in data], dtype=object)
    return data


def column_order(group: h5py.Group) -> list[str]:
    """The names of a table group's columns in table order.

    The group's attribute `columns` (array of names) when present, followed by any
    dataset it does not list (in storage order); otherwise the storage order: creation
    order when the group tracks it, HDF5's name order when it does not. Raises
    ValueError when `columns` names a column the group lacks or names one twice.
    """
    stored = [name for name in group if isinstance(group.get(name), h5py.Dataset)]
    if "columns" not in group.attrs:
        return stored
    listed = plain(group.attrs["columns"])
    listed = [listed] if isinstance(listed, str) else [str(c) for c in listed]
    missing = [c for c in listed if c not in stored]
    if missing:
        raise ValueError(f"{group.name}: attribute 'columns' lists {', '.join(missing)}, "
                         "which the group lacks")
    if len(set(listed)) != len(listed):
        raise ValueError(f"{group.name}: attribute 'columns' names a column twice")
    return listed + [c for c in stored if c not in listed]


def read_table(group: h5py.Group) -> pd.DataFrame:
    """A group of equal-length 1-D datasets as a DataFrame, columns in column_order();
    strings decoded to str. Raises ValueError when the columns' lengths differ."""
    where = group.name
    columns = {name: _read_column(group[name], f"{where}/{name}")
               for name in column_order(group)}
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{n}={k}" for n, k in sorted(lengths.items()))
        raise ValueError(f"{where}: columns have different lengths ({detail})")
    return pd.DataFrame(columns)


def _empty_table(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object if c in ("metric", "scope") else float)
                         for c in columns})


def _check_header(path: str, attrs: dict[str, Any]) -> None:
    fmt = attrs.get("format")
    if fmt != FORMAT_NAME:
        found = "missing" if fmt is None else repr(fmt)
        raise ValueError(f"{path}: not a kvsim results file: root attribute 'format' is "
                         f"{found}, expected {FORMAT_NAME!r}")
    version = attrs.get("version")
    if (not isinstance(version, (int, np.integer)) or isinstance(version, bool)
            or version != FORMAT_VERSION):
        found = "missing" if version is None else f"{version!r} ({type(version).__name__})"
        raise ValueError(f"{path}: unsupported kvsim results version: root attribute "
                         f"'version' is {found}; this reader supports version "
                         f"{FORMAT_VERSION}")


def _read_counters(group: h5py.Group | None) -> dict[str, float]:
    """A run's counters table as {name: value}; {} when absent or empty."""
    if not isinstance(group, h5py.Group) or not {"name", "value"} <= set(group):
        return {}
    t = read_table(group)
    return {str(n): float(v) for n, v in zip(t["name"], t["value"])}


def load_results(path: str | os.PathLike) -> Results:
    """Read a kvsim results file.

    Raises FileNotFoundError if it does not exist and ValueError if it is not an HDF5
    file, its `format` is not "kvsim-results", its `version` is not 1, or /summary is
    missing or lacks a version-1 column.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        attrs = {k: plain(v) for k, v in f.attrs.items()}
        _check_header(path, attrs)
        if not isinstance(f.get("summary"), h5py.Group):
            raise ValueError(f"{path}: group /summary is missing")
        summary = read_table(f["summary"])
        missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
        if missing:
            raise ValueError(f"{path}: /summary lacks column(s) {', '.join(missing)} "
                             f"required by version {FORMAT_VERSION}")
        summary["run"] = summary["run"].astype(np.int64)
        for c in ("spec", "resolved"):
            summary[c] = summary[c].astype(object)

        runs: dict[int, dict[str, pd.DataFrame]] = {}
        run_attrs: dict[int, dict[str, Any]] = {}
        counters: dict[int, dict[str, float]] = {}
        runs_group = f.get("runs")
        if isinstance(runs_group, h5py.Group):
            for name in runs_group:
                group = runs_group.get(name)
                if not isinstance(group, h5py.Group) or not name.isdigit():
                    continue
                index = int(name)
                run_attrs[index] = {k: plain(v) for k, v in group.attrs.items()}
                tables = {}
                for table, columns in RUN_TABLES.items():
                    sub = group.get(table)
                    tables[table] = (read_table(sub) if isinstance(sub, h5py.Group)
                                     else _empty_table(columns))
                runs[index] = tables
                counters[index] = _read_counters(group.get("counters"))
        seq_group = f.get("sequences")
        sequences = (read_table(seq_group) if isinstance(seq_group, h5py.Group)
                     else pd.DataFrame())
    return Results(path=path, attrs=attrs, summary=summary, runs=runs, run_attrs=run_attrs,
                   sequences=sequences, counters=counters)
