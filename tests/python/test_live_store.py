"""The closed-loop file of the live mode (kvsim.live.store; docs/results-format.md,
"Closed-loop results") without a model: rows round-trip with their types, the write is
atomic, a file of another format is refused, and the doc's column table is the code's."""
from __future__ import annotations

import dataclasses
import os
import re

import pytest

from conftest import REPO

kvsim = pytest.importorskip("kvsim")
live = pytest.importorskip("kvsim.live")


def _row(run: str, sequence: int, nll: float) -> "live.Outcome":
    values = {}
    for f in dataclasses.fields(live.Outcome):
        values[f.name] = {"str": f"{f.name}-{sequence}", "int": sequence * 7 - 1,
                          "float": nll + len(f.name)}[str(f.type)]
    values.update(run=run, sequence=sequence, nll=nll)
    return live.Outcome(**values)


def test_rows_round_trip(tmp_path):
    out = str(tmp_path / "closed.h5")
    rows = [_row("full", 0, 1.5), _row("kivi:bits=2", 0, 1.75), _row("full", 3, 0.25)]
    live.store.write_rows(out, {"model": "smollm2", "max_new_tokens": 32}, rows)
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]  # renamed into place
    attrs, back = live.store.read_rows(out)
    assert back == rows  # every column, with its type
    frame = live.load_closed_loop(out)
    assert list(frame.columns) == list(live.COLUMNS)
    assert frame.attrs["model"] == "smollm2" and frame.attrs["max_new_tokens"] == 32
    assert frame["sequence"].dtype.kind == "i" and frame["nll"].tolist() == [1.5, 1.75, 0.25]
    live.store.write_rows(out, {}, [])  # an empty table is a valid file
    assert live.load_closed_loop(out).empty


def test_other_files_are_refused(tmp_path):
    results = tmp_path / "results.h5"
    kvsim.replay(kvsim.open_trace(kvsim.embedded_trace()), ["full"], sequences=[0],
                 measure="last=1").save(results)
    with pytest.raises(ValueError, match="not a closed-loop results file"):
        live.load_closed_loop(results)


def test_docs_table_matches_columns():
    with open(os.path.join(REPO, "docs", "results-format.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Closed-loop results"):]
    section = section[:section.index("\n## ")]
    documented = re.findall(r"^\| `(\w+)` \| (\w+) \| ([^|]*) \| (.*) \|$", section, re.M)
    types = {f.name: str(f.type) for f in dataclasses.fields(live.Outcome)}
    kinds = {"str": "string", "int": "int64", "float": "float64"}
    assert [(name, kind, unit.strip(), doc) for name, kind, unit, doc in documented] == [
        (name, kinds[types[name]], unit or "—", doc)
        for name, (unit, doc) in live.COLUMNS.items()]
