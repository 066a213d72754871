"""The Python trace writer and add_checksums.py store Fletcher-32 on every dataset, in the
HDF5 1.10 format; add_checksums.py keeps every value and attribute (docs/reliability.md)."""
from __future__ import annotations

import os
import sys

import h5py
import numpy as np

CAPTURE = os.path.join(os.path.dirname(__file__), "..", "..", "trace", "capture")
sys.path.insert(0, CAPTURE)

from kvcap.writer import TraceWriter  # noqa: E402

META = dict(model_name="m", model_source="s", num_model_layers=2, num_q_heads=2,
            num_kv_heads=1, head_dim=8, attn_scale=0.35, rope_theta=10000.0,
            layer_ids=[0, 1], sliding_window=[0, 0])


def write_trace(path: str, gzip: int = 0) -> None:
    rng = np.random.default_rng(0)
    with TraceWriter(path, META, gzip=gzip) as w:
        w.add_sequence([1, 2, 3, 4], 2, rng.standard_normal((2, 2, 4, 8)).astype(np.float32),
                       rng.standard_normal((2, 1, 4, 8)).astype(np.float32),
                       rng.standard_normal((2, 1, 4, 8)).astype(np.float32))


def datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    out: dict[str, h5py.Dataset] = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj)
                 if isinstance(obj, h5py.Dataset) else None)
    return out


def test_writer_checksums_every_dataset(tmp_path) -> None:
    path = str(tmp_path / "t.h5")
    write_trace(path, gzip=4)
    with h5py.File(path) as f:
        found = datasets(f)
        assert set(found) >= {"layer_ids", "sliding_window", "sequences/000000/q",
                              "sequences/000000/token_ids"}
        assert all(d.fletcher32 for d in found.values())
        assert f.id.get_create_plist().get_version()[0] >= 2  # checksummed superblock


def test_add_checksums_keeps_everything(tmp_path) -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("add_checksums",
                                                  os.path.join(CAPTURE, "add_checksums.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src, old, new = (str(tmp_path / n) for n in ("src.h5", "old.h5", "new.h5"))
    write_trace(src)
    module.add_checksums(src, old, checksums=False)
    module.add_checksums(old, new)
    with h5py.File(old) as a, h5py.File(new) as b:
        da, db = datasets(a), datasets(b)
        assert not any(d.fletcher32 for d in da.values())
        assert all(d.fletcher32 for d in db.values())
        assert set(da) == set(db)
        for name, d in da.items():
            assert d.dtype == db[name].dtype and np.array_equal(d[()], db[name][()])
            assert dict(d.attrs) == dict(db[name].attrs)
        assert {k: str(v) for k, v in a.attrs.items()} == {k: str(v) for k, v in b.attrs.items()}
