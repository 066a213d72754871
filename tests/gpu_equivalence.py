#!/usr/bin/env python3
"""The CUDA backend against the CPU backend (docs/gpu.md, "Equivalence with the CPU backend").

Replays every quickstart policy (experiments/quickstart/policies.cfg) on the embedded trace with
``--device cpu`` and ``--device cuda`` and compares every column of every run's ``steps`` and
``kv`` tables within the tolerances below (memory bits, kept tokens and the row keys exactly).

    gpu_equivalence.py KVSIM REPO WORK_DIR               # exit 0 equal, 1 not, 77 no GPU (skip)
    gpu_equivalence.py --self-test KVSIM REPO WORK_DIR   # the comparison itself, on the CPU
    gpu_equivalence.py --compare CPU_H5 CUDA_H5          # two results files made elsewhere

The self-test checks that the comparison accepts a file within the tolerances and rejects one
value beyond them, one changed kept-token count and one changed memory-bit count.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

SKIP = 77
# Columns compared exactly: the row keys, memory bits and kept tokens.
EXACT = {"sequence", "layer", "step", "q_head", "kv_head", "data_bits", "meta_bits",
         "fp16_bits", "ideal_bits", "kept_tokens"}
# (absolute, relative) tolerances of the float columns: |gpu - cpu| <= atol + rtol * |cpu|.
TOLERANCE = {
    "rel_err": (1e-4, 1e-3),
    "cosine": (1e-5, 0.0),
    "mass_retained": (1e-5, 0.0),
    "kl": (1e-5, 1e-3),
    "key_err": (1e-5, 1e-4),
    "value_err": (1e-5, 1e-4),
}
# top1_agreement may differ where two exact scores tie to float rounding: at most this share
# of a run's rows.
TOP1_SHARE = 0.005


def compare_results(cpu: Path, gpu: Path) -> list[str]:
    """Every difference beyond the tolerances between two results files, as messages."""
    problems: list[str] = []
    with h5py.File(cpu, "r") as a, h5py.File(gpu, "r") as b:
        runs = sorted(a["runs"].keys())
        if runs != sorted(b["runs"].keys()):
            return [f"runs differ: {runs} vs {sorted(b['runs'].keys())}"]
        for run in runs:
            spec = a["runs"][run].attrs.get("spec", run)
            for table in ("steps", "kv"):
                ta, tb = a["runs"][run][table], b["runs"][run][table]
                if sorted(ta.keys()) != sorted(tb.keys()):
                    problems.append(f"{spec} {table}: columns differ")
                    continue
                for column in sorted(ta.keys()):
                    problems += compare_column(f"{spec} {table}/{column}", column,
                                               ta[column][()], tb[column][()])
    return problems


def compare_column(where: str, column: str, x: np.ndarray, y: np.ndarray) -> list[str]:
    """Messages for one column: its shape, then its values under the column's rule."""
    if x.shape != y.shape:
        return [f"{where}: {x.shape} rows vs {y.shape}"]
    if column == "top1_agreement":
        share = float(np.mean(x != y)) if x.size else 0.0
        return [f"{where}: {share:.4f} of rows differ (> {TOP1_SHARE})"] if share > TOP1_SHARE else []
    if column in EXACT or column not in TOLERANCE:
        bad = np.flatnonzero(x != y)
        return [f"{where}: {bad.size} rows differ, first at {bad[0]}: {x[bad[0]]} vs {y[bad[0]]}"] if bad.size else []
    atol, rtol = TOLERANCE[column]
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    ok = np.abs(yd - xd) <= atol + rtol * np.abs(xd)  # NaN fails
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = bad[0]
        return [f"{where}: {bad.size} rows beyond {atol} + {rtol} |cpu|, first at {i}: "
                f"cpu {xd[i]!r} gpu {yd[i]!r}"]
    return []


def replay(kvsim: str, repo: Path, out: Path, device: str) -> subprocess.CompletedProcess:
    """kvsim replay of the quickstart policies on the embedded trace."""
    return subprocess.run(
        [kvsim, "replay", "-t", str(repo / "trace/data/smollm2_default.h5"), "--config",
         str(repo / "experiments/quickstart/policies.cfg"), "--device", device, "-q",
         "-o", str(out)], capture_output=True, text=True, check=False)


def self_test(cpu: Path, work: Path) -> list[str]:
    """Failures of the comparison itself on perturbed copies of `cpu`."""
    failures: list[str] = []

    def perturbed(name: str, column: str, change) -> Path:
        path = work / f"{name}.h5"
        shutil.copyfile(cpu, path)
        with h5py.File(path, "r+") as f:
            table = "kv" if column in ("kept_tokens", "data_bits", "key_err") else "steps"
            data = f["runs/0001"][table][column]
            values = data[()]
            data[...] = change(values)
        return path

    if compare_results(cpu, cpu):
        failures.append("a file differs from itself")
    within = perturbed("within", "rel_err", lambda v: (v.astype(np.float64) * (1 + 5e-4)).astype(v.dtype))
    if compare_results(cpu, within):
        failures.append("a change within the tolerance was rejected")
    checks = {
        "beyond": ("rel_err", lambda v: np.where(np.arange(v.size) == 3, v + 0.01, v).astype(v.dtype)),
        "kept": ("kept_tokens", lambda v: np.where(np.arange(v.size) == 0, v + 1, v).astype(v.dtype)),
        "bits": ("data_bits", lambda v: np.where(np.arange(v.size) == 0, v + 1, v).astype(v.dtype)),
        "nan": ("kl", lambda v: np.where(np.arange(v.size) == 2, np.nan, v).astype(v.dtype)),
    }
    for name, (column, change) in checks.items():
        if not compare_results(cpu, perturbed(name, column, change)):
            failures.append(f"a change of {column} ({name}) was accepted")
    return failures


def main(argv: list[str]) -> int:
    """Runs the comparison (or its self-test) and reports; see the module docstring."""
    if argv[:1] == ["--compare"] and len(argv) == 3:
        problems = compare_results(Path(argv[1]), Path(argv[2]))
        for p in problems:
            print("DIFF:", p)
        print(f"{len(problems)} columns beyond the tolerances")
        return 1 if problems else 0
    test_mode = argv[:1] == ["--self-test"]
    if test_mode:
        argv = argv[1:]
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    kvsim, repo, work = argv[0], Path(argv[1]), Path(argv[2])
    work.mkdir(parents=True, exist_ok=True)
    cpu = work / "cpu.h5"
    done = replay(kvsim, repo, cpu, "cpu")
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    if test_mode:
        failures = self_test(cpu, work)
        for f in failures:
            print("FAIL:", f)
        return 1 if failures else 0
    gpu = work / "cuda.h5"
    done = replay(kvsim, repo, gpu, "cuda")
    if done.returncode != 0:
        if "no GPU device is visible" in done.stderr or "no CUDA support" in done.stderr:
            print("skipped:", done.stderr.strip())
            return SKIP
        print(done.stderr, file=sys.stderr)
        return 1
    problems = compare_results(cpu, gpu)
    for p in problems:
        print("DIFF:", p)
    print(f"{len(problems)} columns beyond the tolerances")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
