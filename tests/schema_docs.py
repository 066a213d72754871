#!/usr/bin/env python3
"""Checks (or rewrites) the schema tables of the docs against `kvsim schema --markdown`.

Each table of the results file is a block between <!-- schema:KEY --> and
<!-- /schema:KEY --> in a doc; the binary prints the same blocks from the schema
(sim/records.h, sim/results.cc, sim/sweep_results.cc). The check fails when a block
differs, when the docs lack a table of the schema, or hold a block the schema lacks.

    python3 tests/schema_docs.py build/sim/kvsim docs/results-format.md           # check
    python3 tests/schema_docs.py build/sim/kvsim docs/results-format.md --write   # update
"""
from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys

BLOCK = re.compile(r"<!-- schema:(?P<key>[\w-]+) -->\n.*?<!-- /schema:(?P=key) -->\n", re.S)


def blocks(text: str) -> dict[str, str]:
    """The schema blocks of a text, by key."""
    return {m.group("key"): m.group(0) for m in BLOCK.finditer(text)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kvsim")
    parser.add_argument("docs", nargs="+")
    parser.add_argument("--write", action="store_true", help="rewrite the docs' blocks")
    args = parser.parse_args()
    schema = blocks(subprocess.run([args.kvsim, "schema", "--markdown"], check=True,
                                   capture_output=True, text=True).stdout)
    stale, broken, seen = [], [], set()  # stale: fixed by --write; broken: not
    for path in args.docs:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for key, block in blocks(text).items():
            seen.add(key)
            if key not in schema:
                broken.append(f"{path}: block '{key}' is no table of the schema")
            elif block != schema[key]:
                text = text.replace(block, schema[key])
                stale.append("\n".join(difflib.unified_diff(
                    block.splitlines(), schema[key].splitlines(), f"{path} ({key})",
                    "kvsim schema", lineterm="")))
        if args.write:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    broken += [f"no doc has the block of table '{key}' (add the two lines "
               f"<!-- schema:{key} --> and <!-- /schema:{key} --> where it belongs)"
               for key in schema if key not in seen]
    for p in broken + ([] if args.write else stale):
        print(p)
    if stale and not args.write:
        print(f"schema_docs: the docs disagree with the schema; update them with\n"
              f"  python3 tests/schema_docs.py {args.kvsim} {' '.join(args.docs)} --write")
    return 1 if broken or (stale and not args.write) else 0

if __name__ == "__main__":
    sys.exit(main())
