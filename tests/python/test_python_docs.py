"""Every ```python block of docs/python.md runs, in order, in one namespace (as a reader
pastes them into one notebook), in a temporary folder; so do the README's."""

from __future__ import annotations

import os
import re

import pytest

from conftest import REPO

if os.environ.get("KVSIM_REQUIRE_PACKAGE") != "1":
    pytest.importorskip("kvsim")

DOC = os.path.join(REPO, "docs", "python.md")
README = os.path.join(REPO, "README.md")


def python_blocks(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def test_docs_python_examples_run(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    blocks = python_blocks(DOC)
    assert len(blocks) >= 6
    assert len(blocks[0].strip().splitlines()) <= 12  # the opening notebook example
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/python.md block {i + 1}", "exec"), namespace)
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert (tmp_path / "results.h5").exists()


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks(README)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md block {i + 1}", "exec"), {})
