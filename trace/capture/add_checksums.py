#!/usr/bin/env python3
"""Rewrite an HDF5 file (a kvsim trace) with checksums, keeping every value and attribute.

    python3 trace/capture/add_checksums.py IN.h5 OUT.h5
    python3 trace/capture/add_checksums.py --without IN.h5 OUT.h5   (the old layout)

Every dataset is rewritten chunked (its own chunks, or one chunk for a small contiguous
dataset) with its compression and shuffle kept and Fletcher-32 added, in the HDF5 1.10
object formats whose metadata carries checksums (docs/reliability.md). Values, dtypes,
shapes, attributes and object names are copied unchanged, so every result replayed from
the new file is bit-identical. OUT is written to a temporary name and renamed when whole.
"""
from __future__ import annotations

import argparse
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvcap.writer import LIBVER  # noqa: E402


def copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    """Copy every attribute with its stored type (strings stay variable-length UTF-8)."""
    for name in src.attrs:
        dst.attrs.create(name, src.attrs[name], dtype=src.attrs.get_id(name).dtype)


def copy_dataset(name: str, src: h5py.Dataset, parent: h5py.Group, checksums: bool) -> None:
    """Recreate `src` under `parent`: with Fletcher-32 (chunked when it holds data), or
    without (then contiguous unless it was chunked), compression and shuffle kept."""
    data = src[()]
    kw = {}
    if src.chunks and not checksums:
        kw = dict(chunks=src.chunks, shuffle=src.shuffle)
    if src.size > 0 and src.shape and checksums:
        kw = dict(chunks=src.chunks or src.shape, fletcher32=True, shuffle=src.shuffle)
    if kw:
        if src.compression:
            kw.update(compression=src.compression, compression_opts=src.compression_opts)
    dst = parent.create_dataset(name, shape=src.shape, dtype=src.dtype, data=data, **kw)
    copy_attrs(src, dst)


def copy_group(src: h5py.Group, dst: h5py.Group, checksums: bool) -> None:
    copy_attrs(src, dst)
    for name, obj in src.items():
        if isinstance(obj, h5py.Dataset):
            copy_dataset(name, obj, dst, checksums)
        else:
            copy_group(obj, dst.create_group(name), checksums)


def add_checksums(src_path: str, dst_path: str, checksums: bool = True) -> None:
    """Copy `src_path` to `dst_path` with checksums (or, checksums=False, in the layout
    kvsim wrote before them: HDF5's earliest format, no Fletcher-32)."""
    tmp = f"{dst_path}.tmp.{os.getpid()}"
    libver = LIBVER if checksums else ("earliest", "latest")
    try:
        with h5py.File(src_path, "r") as src, h5py.File(tmp, "w", libver=libver) as dst:
            copy_group(src, dst, checksums)
        os.replace(tmp, dst_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--without", action="store_true",
                        help="write the old layout without checksums (for comparisons)")
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args(argv)
    add_checksums(args.src, args.dst, checksums=not args.without)
    return 0


if __name__ == "__main__":
    sys.exit(main())
