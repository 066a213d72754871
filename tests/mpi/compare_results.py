#!/usr/bin/env python3
"""Compares two kvsim results files bit for bit.

Every group, dataset and attribute must be equal -- same dtype, same bytes -- except
what records how a run went rather than what it computed: the wall-time column
/summary/seconds and the /sweep group (ranks, threads, per-unit seconds, units
taken from a checkpoint). With --subset only the objects of A are checked, so a
`kvsim replay` file can be compared with a sweep file that has more columns, or an
older file with one that has a new metric: in a table keyed by a `metric` column
(/runs/NNNN/aggregates) B may hold rows of metrics A lacks; B's rows of A's metrics
must then equal A's rows, in order, to the byte; a table's attribute `columns` (its
column names) in B may go on after A's names.

    python3 compare_results.py A.h5 B.h5 [--subset]     exit 0: identical
    python3 compare_results.py --sweep-info A.h5        /sweep attributes as shell variables
The same check with HDF5's tool:
    h5diff --exclude-path /summary/seconds --exclude-path /sweep A.h5 B.h5
"""
import argparse
import sys

import h5py
import numpy as np

EXCLUDED = ("/summary/seconds", "/sweep")


def excluded(name):
    return any(name == e or name.startswith(e + "/") for e in EXCLUDED)


def same_value(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
        return a.shape == b.shape and a.tolist() == b.tolist()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def extends(a, b):
    """Whether the list b starts with the list a (attribute `columns` under --subset)."""
    a, b = np.asarray(a).reshape(-1).tolist(), np.asarray(b).reshape(-1).tolist()
    return b[:len(a)] == a


def compare(path_a, path_b, subset):
    problems = []
    with h5py.File(path_a, "r") as fa, h5py.File(path_b, "r") as fb:
        def check_attrs(name, oa, ob):
            keys_a, keys_b = set(oa.attrs), set(ob.attrs)
            if not subset and keys_a != keys_b:
                problems.append(f"{name}: attributes {sorted(keys_a ^ keys_b)} differ")
            for key in sorted(keys_a):
                if key not in ob.attrs:
                    problems.append(f"{name}: attribute {key} missing in B")
                elif subset and key == "columns" and extends(oa.attrs[key], ob.attrs[key]):
                    continue
                elif not same_value(oa.attrs[key], ob.attrs[key]):
                    problems.append(f"{name}: attribute {key}: {oa.attrs[key]!r} != {ob.attrs[key]!r}")

        def rows_of_a(ga, gb):
            """B's row selection compared with A's rows: all of them, or under --subset
            in a table keyed by `metric`, those whose metric A has."""
            if not (subset and "metric" in ga and "metric" in gb):
                return slice(None)
            metrics_a = set(ga["metric"].asstr()[()])
            return np.array([m in metrics_a for m in gb["metric"].asstr()[()]], dtype=bool)

        def walk(name, oa, ob):
            check_attrs(name or "/", oa, ob)
            rows = rows_of_a(oa, ob)
            names_a = {k for k in oa if not excluded(f"{name}/{k}")}
            names_b = {k for k in ob if not excluded(f"{name}/{k}")}
            if not subset and names_a != names_b:
                problems.append(f"{name or '/'}: members {sorted(names_a ^ names_b)} differ")
            for key in sorted(names_a):
                child = f"{name}/{key}"
                if key not in ob:
                    problems.append(f"{child}: missing in B")
                    continue
                ca, cb = oa[key], ob[key]
                if isinstance(ca, h5py.Group) != isinstance(cb, h5py.Group):
                    problems.append(f"{child}: group vs dataset")
                elif isinstance(ca, h5py.Group):
                    walk(child, ca, cb)
                else:
                    check_attrs(child, ca, cb)
                    if not same_value(ca[()], cb[()][rows] if cb.ndim == 1 else cb[()]):
                        problems.append(f"{child}: values differ")

        walk("", fa, fb)
    return problems


def sweep_info(path):
    """Prints the /sweep attributes and the number of ranks that computed units."""
    with h5py.File(path, "r") as f:
        for key, value in f["sweep"].attrs.items():
            if np.asarray(value).dtype.kind in "iuf":
                print(f"{key}={value}")
        ranks = f["sweep/units/rank"][()]
        print(f"distinct_ranks={len(np.unique(ranks[ranks >= 0]))}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b", nargs="?")
    parser.add_argument("--subset", action="store_true", help="check only the objects of A")
    parser.add_argument("--sweep-info", action="store_true",
                        help="print A's /sweep attributes as shell assignments")
    args = parser.parse_args()
    if args.sweep_info:
        return sweep_info(args.a)
    if args.b is None:
        parser.error("two files to compare")
    problems = compare(args.a, args.b, args.subset)
    for p in problems[:50]:
        print(f"compare: {p}")
    if problems:
        print(f"compare: {args.a} and {args.b} differ ({len(problems)} problem(s))")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
