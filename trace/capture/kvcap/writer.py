"""Write kvsim trace files (docs/trace-format.md, version 2) with h5py.

The file is written as `<path>.tmp.<pid>` and renamed to `<path>` by `close()`, so a
trace under its final name is always whole; on error the temporary file is removed.
Like kvsim's own writer, it uses the HDF5 1.10 object formats (checksummed metadata) and
Fletcher-32 on every dataset (docs/reliability.md).
"""
from __future__ import annotations

import os
import secrets

import h5py
import numpy as np

FORMAT = "kvsim-trace"
VERSION = 2
DTYPES = ("float16", "bfloat16", "float32")
# The HDF5 format bounds kvsim writes: 1.10 objects carry checksums (HDF5 >= 1.10 reads them).
LIBVER = ("v110", "v110")


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bfloat16_bits(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def encode(x: np.ndarray, dtype: str, what: str = "values") -> np.ndarray:
    """float32 array -> the stored representation; refuses values the type cannot hold."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        idx = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{what}: non-finite value at index {tuple(int(i) for i in idx)}")
    if dtype == "float32":
        return x
    if dtype == "float16":
        m = float(np.abs(x).max()) if x.size else 0.0
        if m > 65504.0:
            raise ValueError(f"{what}: |value| {m:.4g} overflows float16 (max 65504); use --dtype bfloat16 or float32")
        return x.astype(np.float16)
    if dtype == "bfloat16":
        return to_bfloat16_bits(x)
    raise ValueError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")


class TraceWriter:
    """Streaming writer: root metadata at open, one group per `add_sequence`.

    meta: model_name, model_source, num_model_layers, num_q_heads, num_kv_heads,
    head_dim, attn_scale, rope_theta, layer_ids, sliding_window; optional `rope` (dict:
    `type` "default", "linear", "none" or the model's own scaling type, `layout` "half" or
    "interleaved", `rotary_dim` (0 = head_dim), `theta_by_layer` and `factor_by_layer`, one per
    stored layer; absent keys take the unscaled defaults) and `extra` (dict of additional root
    attributes: str/int/float).
    """

    def __init__(self, path: str, meta: dict, dtype: str = "float16", gzip: int = 0, trace_id: str | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if not 0 <= int(gzip) <= 9:
            raise ValueError("gzip level must be 0..9")
        self.path = os.path.abspath(path)
        self.dtype = dtype
        self.gzip = int(gzip)
        self.meta = dict(meta)
        hq, hkv, d = int(meta["num_q_heads"]), int(meta["num_kv_heads"]), int(meta["head_dim"])
        layer_ids = [int(x) for x in meta["layer_ids"]]
        windows = [int(x) for x in meta["sliding_window"]]
        if hq % hkv:
            raise ValueError(f"num_q_heads {hq} is not a multiple of num_kv_heads {hkv}")
        if d % 2:
            raise ValueError(f"head_dim {d} must be even")
        if not layer_ids or any(b <= a for a, b in zip(layer_ids, layer_ids[1:])):
            raise ValueError(f"layer_ids must be non-empty and strictly ascending: {layer_ids}")
        if layer_ids[0] < 0 or layer_ids[-1] >= int(meta["num_model_layers"]):
            raise ValueError("layer_ids outside the model's layers")
        if len(windows) != len(layer_ids) or min(windows) < 0:
            raise ValueError("sliding_window needs one value >= 0 per stored layer")
        rope = dict(meta.get("rope") or {})
        thetas = [float(x) for x in rope.get("theta_by_layer", [meta["rope_theta"]] * len(layer_ids))]
        factors = [float(x) for x in rope.get("factor_by_layer", [1.0] * len(layer_ids))]
        if len(thetas) != len(layer_ids) or len(factors) != len(layer_ids):
            raise ValueError("rope theta_by_layer and factor_by_layer need one value per stored layer")
        rotary_dim = int(rope.get("rotary_dim", 0))
        if rotary_dim < 0 or rotary_dim > d or rotary_dim % 2:
            raise ValueError(f"rotary_dim {rotary_dim} must be even and in [0, head_dim]")
        layout = str(rope.get("layout", "half"))
        if layout not in ("half", "interleaved"):
            raise ValueError(f"rope layout must be 'half' or 'interleaved', not {layout!r}")
        self.shape = (len(layer_ids), hq, hkv, d)
        self.num_sequences = 0
        d_name = os.path.dirname(self.path)
        if d_name and not os.path.isdir(d_name):
            raise OSError(f"output directory '{d_name}' does not exist")
        self.tmp = f"{self.path}.tmp.{os.getpid()}"
        self.f = h5py.File(self.tmp, "w", libver=LIBVER)
        try:
            a = self.f.attrs
            a["format"] = FORMAT
            a["version"] = np.int64(VERSION)
            a["model_name"] = str(meta["model_name"])
            a["model_source"] = str(meta["model_source"])
            a["trace_id"] = trace_id or secrets.token_hex(8)
            a["num_model_layers"] = np.int64(meta["num_model_layers"])
            a["num_q_heads"] = np.int64(hq)
            a["num_kv_heads"] = np.int64(hkv)
            a["head_dim"] = np.int64(d)
            a["attn_scale"] = np.float64(meta["attn_scale"])
            a["rope_theta"] = np.float64(meta["rope_theta"])
            a["dtype"] = dtype
            a["num_sequences"] = np.int64(0)
            a["rope_type"] = str(rope.get("type", "default"))
            a["rope_layout"] = layout
            a["rotary_dim"] = np.int64(rotary_dim)
            for k, v in (meta.get("extra") or {}).items():
                a[k] = _attr(v)
            self.f.create_dataset("layer_ids", data=np.asarray(layer_ids, dtype=np.int32), fletcher32=True)
            self.f.create_dataset("sliding_window", data=np.asarray(windows, dtype=np.int32), fletcher32=True)
            self.f.create_dataset("rope_theta_by_layer", data=np.asarray(thetas, dtype=np.float64), fletcher32=True)
            self.f.create_dataset("rope_factor_by_layer", data=np.asarray(factors, dtype=np.float64), fletcher32=True)
            self.seqs = self.f.create_group("sequences")
        except BaseException:
            self.abort()
            raise

    def add_sequence(self, token_ids, prompt_len: int, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                     attrs: dict | None = None) -> str:
        """q [L, Hq, T, d], k/v [L, Hkv, T, d] float32 (converted to the file's dtype)."""
        L, hq, hkv, d = self.shape
        token_ids = np.asarray(token_ids, dtype=np.int64)
        T = int(token_ids.shape[0])
        if not 1 <= int(prompt_len) <= T:
            raise ValueError(f"prompt_len {prompt_len} outside [1, {T}]")
        for name, arr, heads in (("q", q, hq), ("k", k, hkv), ("v", v, hkv)):
            if tuple(arr.shape) != (L, heads, T, d):
                raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {(L, heads, T, d)}")
        name = f"{self.num_sequences:06d}"
        g = self.seqs.create_group(name)
        g.attrs["prompt_len"] = np.int64(prompt_len)
        g.attrs["num_tokens"] = np.int64(T)
        for key, val in (attrs or {}).items():
            g.attrs[key] = _attr(val)
        g.create_dataset("token_ids", data=token_ids.astype(np.int32), fletcher32=True)
        # One unpadded sequence: the position of trace index t is t (kvsim's reader checks it).
        g.create_dataset("position_ids", data=np.arange(T, dtype=np.int32), fletcher32=True)
        store = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}[self.dtype]
        for dname, arr in (("q", q), ("k", k), ("v", v)):
            data = encode(arr, self.dtype, f"sequence {name} {dname}")
            kw = {}
            if self.gzip:
                kw = {"compression": "gzip", "compression_opts": self.gzip, "shuffle": True}
            ds = g.create_dataset(dname, data=data, dtype=store, chunks=(1, 1, T, d), fletcher32=True, **kw)
            ds.attrs["dtype"] = self.dtype
        self.num_sequences += 1
        self.f.attrs["num_sequences"] = np.int64(self.num_sequences)
        return name

    def close(self) -> str:
        if self.num_sequences == 0:
            self.abort()
            raise ValueError("no sequences written")
        self.f.attrs["num_sequences"] = np.int64(self.num_sequences)
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.f.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            os.remove(self.tmp)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _attr(v):
    if isinstance(v, bool):
        return np.int64(int(v))
    if isinstance(v, (int, np.integer)):
        return np.int64(v)
    if isinstance(v, (float, np.floating)):
        return np.float64(v)
    return str(v)


def read_sequence(path: str, index: int, slot=None) -> dict:
    """Read one sequence back as float32 (handy for tests and analysis)."""
    with h5py.File(path, "r") as f:
        dtype = f.attrs["dtype"]
        g = f[f"sequences/{index:06d}"]
        out = {"token_ids": g["token_ids"][()], "prompt_len": int(g.attrs["prompt_len"])}
        for name in ("q", "k", "v"):
            raw = g[name][()] if slot is None else g[name][slot]
            out[name] = from_bfloat16_bits(raw) if dtype == "bfloat16" else raw.astype(np.float32)
        out["attrs"] = dict(g.attrs)
    return out
