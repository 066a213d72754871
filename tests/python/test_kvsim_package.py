"""The Python package kvsim (docs/python.md): Python scorers against their C++
counterparts, kvsim.replay against the CLI, save/load round trips, errors, views."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import REPO

if os.environ.get("KVSIM_REQUIRE_PACKAGE") == "1":  # tests/run.sh installs it
    import kvsim
else:
    kvsim = pytest.importorskip("kvsim")

import kvsim_analysis as ka  # noqa: E402

CLI = os.path.join(REPO, "build", "sim", "kvsim")
COMPARE = os.path.join(REPO, "tests", "mpi", "compare_results.py")


@pytest.fixture(scope="module")
def trace() -> "kvsim.Trace":
    return kvsim.open_trace(kvsim.embedded_trace())


def sequential_sq_norms(keys: np.ndarray) -> np.ndarray:
    """sum_c k_c^2 in float64, accumulated channel by channel as evict::squared_norm does."""
    k = keys.astype(np.float64)
    s = np.zeros(k.shape[0])
    for c in range(k.shape[1]):
        s += k[:, c] * k[:, c]
    return s


@kvsim.scorer("l2norm_test", params={"budget": 0.5, "schedule": "once"})
def l2norm_test(view):
    return -sequential_sq_norms(view.keys[view.candidates])


@kvsim.scorer("l2norm_cap_test", params={"budget": 40, "schedule": "cap"})
def l2norm_cap_test(view):
    return -sequential_sq_norms(view.keys[view.candidates])


def run_frames(res: "kvsim.Results", run: int, table: str) -> pd.DataFrame:
    frame = getattr(res, table)
    return frame[frame["run"] == run].drop(columns="run").reset_index(drop=True)


@pytest.mark.parametrize("cxx, py", [
    ("l2norm:skip=[]", "l2norm_test"),
    ("l2norm:skip=[],keep_ratio=0.3", "l2norm_test:budget=0.3"),
    ("l2norm:skip=[],schedule=cap,cap=40+kivi:bits=4", "l2norm_cap_test+kivi:bits=4"),
])
def test_python_l2norm_is_bit_identical_to_cxx(trace, cxx, py):
    res = kvsim.replay(trace, [cxx, py, "full"], measure="stride=4", threads=2)
    for table in ("steps", "kv"):
        a, b = run_frames(res, 0, table), run_frames(res, 1, table)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert not a.equals(run_frames(res, 2, table))  # evictions happened
    counters = res.counters.set_index(["run", "name"])["value"]
    py_name = kvsim.parse_spec(py).stages[0].name
    assert counters[(0, "l2norm.evicted_tokens")] == counters[(1, f"{py_name}.evicted_tokens")] > 0


SPECS = ["full", "h2o:heavy_tokens=24,recent_tokens=24+kivi:bits=2",
         "snapkv:ratio=0.3+kivi:bits=4", "minicache"]


@pytest.mark.skipif(not os.path.exists(CLI), reason="needs build/sim/kvsim")
def test_replay_equals_cli_to_the_bit(tmp_path, trace):
    cli_out, py_out = tmp_path / "cli.h5", tmp_path / "py.h5"
    args = [CLI, "replay", "-t", trace.path, "-o", str(cli_out), "--measure", "stride=8",
            "--sequences", "0", "2", "-q"]
    for s in SPECS:
        args += ["-p", s]
    subprocess.run(args, check=True)
    res = kvsim.replay(trace, SPECS, measure="stride=8", sequences=[0, 2], threads=2)
    res.save(py_out)
    subprocess.run([sys.executable, COMPARE, str(cli_out), str(py_out)], check=True)
    # And as frames: the CLI's file loaded equals the replay's own frames.
    cli = kvsim.load_results(cli_out)
    for table in ("steps", "kv", "counters", "per_layer"):
        pd.testing.assert_frame_equal(getattr(cli, table), getattr(res, table), check_exact=True)
    pd.testing.assert_frame_equal(cli.summary.drop(columns="seconds"),
                                  res.summary.drop(columns="seconds"), check_exact=True)


def test_save_load_round_trip(tmp_path, trace):
    res = kvsim.replay(trace, ["kivi:bits=2", "l2norm_cap_test:budget=32", "mikv"],
                       measure="last=3")
    res.save(tmp_path / "r.h5")
    back = kvsim.load_results(tmp_path / "r.h5")
    for table in ("summary", "steps", "kv", "counters", "per_layer"):
        pd.testing.assert_frame_equal(getattr(back, table), getattr(res, table), check_exact=True)
    assert back.attrs["format"] == "kvsim-results"
    # Schema order and str columns, from the C++ column lists.
    with h5py.File(tmp_path / "r.h5") as f:
        stored = [c.decode() if isinstance(c, bytes) else c for c in f["runs/0000/steps"].attrs["columns"]]
    assert list(res.steps.columns) == ["run"] + stored
    assert all(isinstance(s, str) for s in res.summary["spec"])
    back.save(tmp_path / "copy.h5")  # a loaded file saves as a copy
    assert kvsim.load_results(tmp_path / "copy.h5").steps.equals(res.steps)


@pytest.mark.skipif(not os.path.exists(CLI), reason="needs build/sim/kvsim")
@pytest.mark.parametrize("spec", ["kivi:bitz=2", "nosuch", "kivi+uniform", "h2o:heavy_tokens=1e+3+kivi"])
def test_errors_carry_the_cli_message(tmp_path, trace, spec):
    cli = subprocess.run([CLI, "replay", "-t", trace.path, "-p", spec, "-o", str(tmp_path / "x.h5")],
                         capture_output=True, text=True)
    assert cli.returncode == 2
    with pytest.raises(kvsim.ConfigError) as e:
        kvsim.replay(trace, [spec])
    message = str(e.value)  # lists the scorers registered here among the valid policies
    for name in kvsim._core.python_scorers():
        message = message.replace(f", {name},", ",")
    assert cli.stderr.strip() == f"kvsim: error: {message}"
    assert isinstance(e.value, kvsim.Error)


def test_format_and_io_errors(tmp_path, trace):
    res = kvsim.replay(trace, ["full"], measure="last=1", sequences=[0])
    res.save(tmp_path / "r.h5")
    with pytest.raises(kvsim.TraceFormatError, match="expected 'kvsim-trace'"):
        kvsim.open_trace(tmp_path / "r.h5")
    with pytest.raises(kvsim.IoError, match="cannot open"):
        kvsim.open_trace(tmp_path / "missing.h5")


def test_scorer_exception_propagates_with_traceback(trace):
    @kvsim.scorer("raises_test", params={"budget": 8})
    def raises_test(view):
        raise KeyError("inside the scorer")

    for threads in (1, 2):
        with pytest.raises(KeyError, match="inside the scorer") as e:
            kvsim.replay(trace, ["full", "raises_test"], threads=threads)
        assert any(tb.name == "raises_test" for tb in e.traceback)
    # The engine is usable afterwards (no lock or GIL left held).
    assert len(kvsim.replay(trace, ["full"], measure="last=1", threads=2).summary) == 1


def test_scorer_wrong_shape_is_an_error(trace):
    @kvsim.scorer("short_test", params={"budget": 8})
    def short_test(view):
        return np.zeros(len(view.candidates) - 1)

    with pytest.raises(ValueError, match="expected"):
        kvsim.replay(trace, ["short_test"], sequences=[0])


def test_score_view_arrays_are_views_of_the_trace(trace):
    seen = {}

    @kvsim.scorer("view_test", params={"budget": 16, "extra": 2.5}, observe="sum", prefill_rows=-1)
    def view_test(view):
        if not seen:
            seen.update(view=view, layer=view.layer, kv=view.kv_head, step=view.step,
                        keys=view.keys.copy(), queries=view.queries.copy(),
                        writeable=view.keys.flags.writeable, params=view.params,
                        att=view.attention.copy(), group=view.group)
        return view.attention[view.candidates]

    kvsim.replay(trace, ["view_test"], sequences=[0], threads=1)
    layer = trace.layer(0, seen["layer"])
    kv, step, g = seen["kv"], seen["step"], seen["group"]
    np.testing.assert_array_equal(seen["keys"], layer.k[kv, :step + 1])
    np.testing.assert_array_equal(seen["queries"], layer.q[kv * g:(kv + 1) * g, :step + 1])
    assert not seen["writeable"] and seen["params"] == {"budget": 16, "extra": 2.5}
    assert seen["att"].shape == (step + 1,) and seen["att"].sum() > 0
    with pytest.raises(RuntimeError, match="only during"):
        seen["view"].keys  # noqa: B018


def test_open_trace_matches_h5py(trace):
    with h5py.File(trace.path) as f:
        name = sorted(f["sequences"])[1]
        slot = 2
        expected = f["sequences"][name]["k"][slot].astype(np.float32)
    layer = trace.layer(1, trace.meta["layer_ids"][slot])
    np.testing.assert_array_equal(layer.k, expected)
    assert layer.k.base is not None and layer.q.dtype == np.float32


def test_policies_and_parse_spec():
    by_name = {p.name: p for p in kvsim.policies()}
    assert by_name["kivi"].kind == "quantize" and "l2norm_test" in by_name
    assert by_name["h2o"].defaults["heavy"] == "0.1"
    spec = kvsim.parse_spec("h2o:heavy=1e+0+kivi:bits=4")
    assert [s.name for s in spec.stages] == ["h2o", "kivi"]
    assert spec.stages[0].given_params == {"heavy": 1.0}
    assert spec.stages[0].params["recent"] == 0.1
    with pytest.raises(kvsim.ConfigError, match="'1e\\+3' for 'heavy_tokens'"):
        kvsim.parse_spec("h2o:heavy_tokens=1e+3+kivi")


def test_kvsim_analysis_parse_spec_uses_the_cxx_split():
    assert ka.parse_spec("h2o:heavy=1e+0+kivi") == [("h2o", {"heavy": 1.0}), ("kivi", {})]
    # The fallback (policies this process does not know) splits as the C++ parser does.
    assert ka.parse_spec("myevict:tokens=1e+3+myquant:bits=2") == [
        ("myevict", {"tokens": 1000.0}), ("myquant", {"bits": 2})]


def test_synth_and_progress(tmp_path, capsys):
    small = kvsim.synth(tmp_path / "t.h5", preset="tiny", seed=5, sequences=2)
    assert small.num_sequences == 2
    with pytest.raises(kvsim.ConfigError, match="unknown option"):
        kvsim.synth(tmp_path / "u.h5", preset="tiny", bogus=1)
    kvsim.replay(small, ["full"], progress=True)
    assert "replay" in capsys.readouterr().err


def test_redefining_a_scorer_replaces_it(trace):
    def define(sign: float) -> None:
        @kvsim.scorer("redefined_test", params={"budget": 24, "schedule": "cap"})
        def redefined_test(view):
            return sign * sequential_sq_norms(view.keys[view.candidates])

    define(1.0)
    high = kvsim.replay(trace, ["redefined_test"], measure="last=1", sequences=[0])
    define(-1.0)  # now the lowest norms stay, like l2norm
    low = kvsim.replay(trace, ["redefined_test", "l2norm:skip=[],schedule=cap,cap=24"],
                       measure="last=1", sequences=[0])
    assert run_frames(low, 0, "steps").equals(run_frames(low, 1, "steps"))
    assert not run_frames(high, 0, "steps").equals(run_frames(low, 0, "steps"))
    with pytest.raises(kvsim.ConfigError, match="already exists"):
        kvsim.scorer("h2o", params={"budget": 8})(lambda view: view.candidates)


def test_replay_checks_every_value_first(tmp_path):
    """A non-finite value in a sequence that is not replayed is refused, as by the CLI."""
    path = tmp_path / "bad.h5"
    kvsim.synth(path, preset="tiny", seed=3, sequences=2)
    with h5py.File(path, "r+") as f:
        v = f["sequences/000001/v"]
        bad = v[...]
        bad.flat[7] = np.inf
        v[...] = bad
    with pytest.raises(kvsim.TraceFormatError, match="non-finite|Inf|inf"):
        kvsim.replay(kvsim.open_trace(path), ["full"], sequences=[0])
