"""Every shell command of README.md and docs/*.md runs (the ```bash blocks).

Each file's blocks run in order, one command at a time (a command is a line, with its
backslash continuations), with `bash -e -o pipefail`, in a fresh temporary folder that
holds:

- links to the repository's folders (build/, analysis/, experiments/, trace/, tests/,
  docs/), so `build/sim/kvsim ...` and `python3 analysis/...` run as written;
- `kvsim` on PATH (the built build/sim/kvsim, or $KVSIM_BIN);
- the files the docs name without making them (the fixtures): `trace.h5`, a copy of the
  embedded trace trace/data/smollm2_default.h5 (3 sequences, 5 layers, ~240 tokens);
  `sweep.yaml`, a 3-configuration sweep over it; `a.h5` and `b.h5`, two results of that
  sweep; `sweep.h5` the same, and `replay.h5` a `kvsim replay` of its configurations.

A block or command that cannot run here is marked in the doc, in an HTML comment on the
lines just before its block (the reason is required, and shown in the summary):

    <!-- doc-test: skip (reason) -->                      the whole block
    <!-- doc-test: skip "command prefix" (reason) -->     its commands that start so

A marker whose prefix matches no command of its block fails the test, so markers do not
outlive their commands. The summary of what ran and what was skipped, and why, is
printed at the end of the pytest run (conftest.py) and in the failure message.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KVSIM = os.environ.get("KVSIM_BIN", os.path.join(REPO, "build", "sim", "kvsim"))
EMBEDDED = os.path.join(REPO, "trace", "data", "smollm2_default.h5")
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO)
                              for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
LINKED = ["build", "analysis", "experiments", "trace", "tests", "docs"]
COMMAND_TIMEOUT_S = 120
MARKER = re.compile(r'<!--\s*doc-test:\s*skip\s*(?:"(?P<prefix>[^"]+)")?\s*'
                    r'\((?P<reason>[^)]+(?:\([^)]*\)[^)]*)*)\)\s*-->')

SWEEP_YAML = """\
# Fixture of tests/python/test_doc_commands.py: a small sweep over trace.h5.
traces: [trace.h5]
measure: last=4
seed: 0
policies:
  - full
  - spec: "uniform:bits={bits}"
    grid: {bits: [2, 4]}
"""

# What the docs' commands ran and skipped (printed by conftest.pytest_terminal_summary).
SUMMARY: list[str] = []


@dataclass
class Block:
    """A ```bash block: its first line number, commands and skip markers."""
    doc: str
    line: int
    commands: list[tuple[int, str]] = field(default_factory=list)
    skip_all: str | None = None
    skip_prefixes: list[tuple[str, str]] = field(default_factory=list)


def doc_blocks(doc: str) -> list[Block]:
    """The ```bash blocks of a doc with their commands (continuations joined, comment-
    only lines dropped) and the doc-test markers just above them."""
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        block = Block(doc, i + 1)
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("<!--"):
            m = MARKER.search(lines[j])
            if m is None:
                raise AssertionError(f"{doc}:{j + 1}: unreadable doc-test marker: {lines[j]}")
            if m.group("prefix"):
                block.skip_prefixes.append((m.group("prefix"), m.group("reason").strip()))
            else:
                block.skip_all = m.group("reason").strip()
            j -= 1
        i += 1
        pending, start = "", 0
        while i < len(lines) and lines[i].strip() != "```":
            text = lines[i]
            if not pending:
                start = i + 1
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
            else:
                command = (pending + text).strip()
                pending = ""
                if command and not command.startswith("#"):
                    block.commands.append((start, command))
            i += 1
        blocks.append(block)
        i += 1
    return blocks


def make_fixtures(where: str) -> dict[str, str]:
    """The temporary folder's links, fixtures and environment."""
    for name in LINKED:
        os.symlink(os.path.join(REPO, name), os.path.join(where, name))
    bin_dir = os.path.join(where, ".bin")
    os.mkdir(bin_dir)
    os.symlink(os.path.abspath(KVSIM), os.path.join(bin_dir, "kvsim"))
    shutil.copyfile(EMBEDDED, os.path.join(where, "trace.h5"))
    with open(os.path.join(where, "sweep.yaml"), "w", encoding="utf-8") as f:
        f.write(SWEEP_YAML)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               MPLBACKEND="Agg")
    for out in ("a.h5", "b.h5", "sweep.h5"):
        subprocess.run([KVSIM, "sweep", "sweep.yaml", "-o", out, "-q"], cwd=where, env=env,
                       check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S)
    subprocess.run([KVSIM, "replay", "-t", "trace.h5", "-p", "full", "-p", "uniform:bits=2",
                    "-p", "uniform:bits=4", "--measure", "last=4", "-o", "replay.h5"], cwd=where, env=env, check=True,
                   capture_output=True, timeout=COMMAND_TIMEOUT_S)
    return env


def test_markers_are_parsed():
    text = '<!-- doc-test: skip "mpirun -np 64" (64 ranks (one machine has 2 cores)) -->'
    m = MARKER.search(text)
    assert m and m.group("prefix") == "mpirun -np 64"
    assert m.group("reason") == "64 ranks (one machine has 2 cores)"
    assert MARKER.search("<!-- doc-test: skip () -->") is None  # a reason is required


@pytest.mark.skipif(not os.access(KVSIM, os.X_OK),
                    reason=f"kvsim binary not built at {KVSIM} (cmake --build build)")
@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_run(doc, tmp_path):
    blocks = doc_blocks(doc)
    if not blocks:
        SUMMARY.append(f"{doc}: no bash block")
        return
    env = make_fixtures(str(tmp_path))
    failures, report = [], []
    for block in blocks:
        used = set()
        for line, command in block.commands:
            where = f"{doc}:{line}"
            reason = block.skip_all
            for prefix, why in block.skip_prefixes:
                if command.startswith(prefix):
                    reason = why
                    used.add(prefix)
            if reason:
                report.append(f"SKIP {where}: {command[:90]}  -- {reason}")
                continue
            start = time.monotonic()
            try:
                proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command],
                                      cwd=tmp_path, env=env, capture_output=True, text=True,
                                      stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT_S)
                rc, out = proc.returncode, proc.stdout + proc.stderr
            except subprocess.TimeoutExpired:
                rc, out = "timeout", f"ran over {COMMAND_TIMEOUT_S} s"
            seconds = time.monotonic() - start
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
            report.append(f"RUN  {where}: {command[:90]}  -- {status}, {seconds:.1f} s")
            if rc != 0:
                failures.append(f"{where}: `{command}` exited {rc}:\n{out[-2000:]}")
        for prefix, _ in block.skip_prefixes:
            if prefix not in used:
                failures.append(f"{doc}:{block.line}: the marker's prefix \"{prefix}\" "
                                "matches no command of the block")
    SUMMARY.extend(report)
    assert not failures, "\n".join(report) + "\n\n" + "\n\n".join(failures)
