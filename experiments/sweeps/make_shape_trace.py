#!/usr/bin/env python3
"""Writes a metadata-only kvsim trace of a given model shape (datasets allocated lazily,
no values), so that `kvsim sweep --dry-run --trace SHAPE.h5 --ranks N` can project a
sweep's units, plan and time to a model that has not been captured. Reading its values
fails, so it is for --dry-run only.

    python3 experiments/sweeps/make_shape_trace.py /tmp/bench_shape.h5 \
        --layers 32 --q-heads 32 --kv-heads 8 --head-dim 128 --tokens 4096 --prompt-len 3840 --sequences 8
    build/sim/kvsim sweep experiments/sweeps/load_test.yaml --trace /tmp/bench_shape.h5 --dry-run --ranks 256
"""
import argparse

import h5py
import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--prompt-len", type=int, default=3840)
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--sliding-window", type=int, default=0, help="window of every layer (0 = none)")
    a = p.parse_args()
    with h5py.File(a.out, "w") as f:
        f.attrs.update({
            "format": "kvsim-trace", "version": np.int64(1),
            "model_name": "shape-only (no values)", "model_source": "make_shape_trace.py",
            "trace_id": f"shape{a.layers}x{a.q_heads}x{a.kv_heads}x{a.head_dim}x{a.tokens}",
            "num_model_layers": np.int64(a.layers), "num_q_heads": np.int64(a.q_heads),
            "num_kv_heads": np.int64(a.kv_heads), "head_dim": np.int64(a.head_dim),
            "attn_scale": a.head_dim ** -0.5, "rope_theta": 10000.0, "dtype": "float16",
            "num_sequences": np.int64(a.sequences),
        })
        f["layer_ids"] = np.arange(a.layers, dtype=np.int32)
        f["sliding_window"] = np.full(a.layers, a.sliding_window, dtype=np.int32)
        seqs = f.create_group("sequences")
        for s in range(a.sequences):
            g = seqs.create_group(f"{s:06d}")
            g.attrs["prompt_len"] = np.int64(a.prompt_len)
            g.attrs["num_tokens"] = np.int64(a.tokens)
            g["token_ids"] = np.zeros(a.tokens, dtype=np.int32)
            for name, heads in (("q", a.q_heads), ("k", a.kv_heads), ("v", a.kv_heads)):
                g.create_dataset(name, shape=(a.layers, heads, a.tokens, a.head_dim),
                                 dtype=np.float16, chunks=(1, 1, a.tokens, a.head_dim))


if __name__ == "__main__":
    main()
