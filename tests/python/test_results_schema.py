"""The Python loader follows the schema a kvsim binary writes (docs/results-format.md).

Runs the built binary (KVSIM_BIN, default build/sim/kvsim) on a tiny synthetic trace and
checks that load_results() gives every table in the schema's order with the schema's
units and docs, and that the report's Markdown table picks up a labelled metric (the
top-1 agreement) without listing it anywhere in analysis/.
"""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest

from conftest import REPO

import kvsim_results as kres  # noqa: E402
import kvsim_tables as ktab  # noqa: E402

KVSIM = os.environ.get("KVSIM_BIN", os.path.join(REPO, "build", "sim", "kvsim"))
needs_kvsim = pytest.mark.skipif(not os.access(KVSIM, os.X_OK),
                                 reason=f"kvsim binary not built at {KVSIM}")
ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| (?P<type>\w+) \| (?P<unit>[^|]*) \| (?P<doc>.*) \|$")


def schema_tables() -> dict[str, list[tuple[str, str, str, str]]]:
    """`kvsim schema --markdown` parsed: {table key: [(name, type, unit, doc)]}."""
    out = subprocess.run([KVSIM, "schema", "--markdown"], check=True, capture_output=True,
                         text=True).stdout
    tables: dict[str, list[tuple[str, str, str, str]]] = {}
    key = None
    for line in out.splitlines():
        if m := re.match(r"<!-- schema:([\w-]+) -->", line):
            key = m.group(1)
            tables[key] = []
        elif key and (m := ROW.match(line)):
            tables[key].append((m["name"], m["type"], m["unit"].strip(), m["doc"]))
    return tables


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    work = tmp_path_factory.mktemp("schema")
    trace, out = work / "t.h5", work / "r.h5"
    subprocess.run([KVSIM, "synth", "--preset", "tiny", "-o", str(trace)], check=True,
                   capture_output=True)
    subprocess.run([KVSIM, "replay", "-t", str(trace), "-p", "full", "-p",
                    "streamingllm:sinks=0,window=4", "--measure", "all", "-q", "-o", str(out)],
                   check=True, capture_output=True)
    return kres.load_results(out)


DTYPES = {"int32": np.int32, "int64": np.int64, "float32": np.float32,
          "float64": np.float64, "string": object}


@needs_kvsim
@pytest.mark.parametrize("key", ["summary", "steps", "kv", "aggregates", "sequences"])
def test_loaded_tables_follow_the_schema(replayed, key):
    schema = schema_tables()[key]
    df = {"summary": replayed.summary, "sequences": replayed.sequences}.get(key)
    if df is None:
        df = replayed.runs[1][key]
    assert list(df.columns) == [name for name, *_ in schema]
    for name, dtype, unit, doc in schema:
        if (key, name) != ("summary", "run"):  # load_results widens the run index to int64
            assert df[name].dtype == DTYPES[dtype], name
        assert df.attrs["units"][name] == unit, name
        assert df.attrs["docs"][name] == doc, name
    # The version-1 lists of the loader are a part of the schema, in its order.
    v1 = {"summary": kres.SUMMARY_COLUMNS, "steps": kres.STEPS_COLUMNS,
          "kv": kres.KV_COLUMNS, "aggregates": kres.AGGREGATES_COLUMNS}.get(key, [])
    names = [name for name, *_ in schema]
    assert [c for c in names if c in v1] == v1


@needs_kvsim
def test_a_new_labelled_metric_reaches_the_report(replayed):
    table = ktab.summary_table(replayed)
    columns = dict(ktab.report_columns(table))
    assert columns["top1_agreement_mean"] == "top-1 agree"
    md = ktab.markdown_table(table)
    assert "top-1 agree" in md.splitlines()[0]
    # full keeps everything: its top token always agrees; a 4-token window does not.
    by_spec = dict(zip(table["spec"], table["top1_agreement_mean"]))
    assert by_spec["full"] == 1.0
    assert 0.0 < by_spec["streamingllm:sinks=0,window=4"] < 1.0
    steps = replayed.runs[1]["steps"]
    assert set(np.unique(steps["top1_agreement"])) == {0, 1}
    assert steps["top1_agreement"].mean() == pytest.approx(by_spec["streamingllm:sinks=0,window=4"])
