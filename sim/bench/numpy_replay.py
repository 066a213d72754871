#!/usr/bin/env python3
"""A vectorised NumPy replay of four kvsim policies, written as the yardstick of issue 11.

    python3 sim/bench/numpy_replay.py TRACE POLICY --out RECORDS.npz

replays every sequence of TRACE (a kvsim trace, docs/trace-format.md) through POLICY, one of
``full``, ``kivi:bits=2``, ``snapkv`` and ``h2o`` with kvsim's default parameters, at kvsim's
``--measure auto`` steps, and writes the rel_err of every (sequence, layer, query head, step)
record. It is what a careful NumPy user would write for the same work: float32 throughout,
vectorised over heads, steps and tokens; the one Python loop over decode steps is H2O's, whose
cache at step t depends on the attention of step t - 1. ``sim/bench/compare_numpy.py`` checks
its records against kvsim's and times both.

The policies follow their C++ definitions (policies/*.cc): KIVI's per-channel key groups and
per-token value groups with an fp16 residual of 128 recent tokens (values flushed eagerly),
SnapKV's max-pooled column sums of the last 32 prompt rows at a 20% budget, H2O's accumulated
attention with 10% heavy hitters and a 10% recent window. Traces with sliding-window layers are
refused (the policies' windows are not reproduced here).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import h5py
import numpy as np

POLICIES = ("full", "kivi:bits=2", "snapkv", "h2o")
KIVI_BITS, KIVI_GROUP, KIVI_RESIDUAL = 2, 32, 128
SNAPKV_RATIO, SNAPKV_WINDOW, SNAPKV_KERNEL = 0.2, 32, 7
H2O_HEAVY, H2O_RECENT = 0.1, 0.1


def fraction_tokens(fraction: float, n: int) -> int:
    """ceil(fraction * n), robust to binary noise (policies/evict_budget.h)."""
    x = fraction * n
    nearest = round(x)
    if abs(x - nearest) <= 1e-9 * max(1.0, abs(x)):
        return int(nearest)
    return int(math.ceil(x))


def measured_steps(prompt_len: int, num_tokens: int) -> np.ndarray:
    """kvsim's ``--measure auto``: about 256 decode steps, the last one always."""
    decode = num_tokens - prompt_len
    stride = max(1, (decode + 255) // 256)
    steps = list(range(prompt_len, num_tokens, stride))
    if steps[-1] != num_tokens - 1:
        steps.append(num_tokens - 1)
    return np.asarray(steps)


def read_trace(path: str) -> tuple[dict, list[dict]]:
    """Reads a trace's metadata and every sequence's Q, K, V as float32, checking the values."""
    with h5py.File(path, "r") as f:
        meta = {k: f.attrs[k] for k in ("num_q_heads", "num_kv_heads", "head_dim", "attn_scale")}
        if np.any(f["sliding_window"][...] > 0):
            sys.exit("numpy_replay: sliding-window layers are not supported")
        meta["layer_ids"] = f["layer_ids"][...]
        sequences = []
        for name in sorted(f["sequences"]):
            g = f["sequences"][name]
            seq = {"prompt_len": int(g.attrs["prompt_len"])}
            for key in "qkv":
                seq[key] = g[key][...].astype(np.float32)
                if not np.isfinite(seq[key]).all():
                    sys.exit(f"numpy_replay: non-finite value in sequence {name} dataset {key}")
            sequences.append(seq)
    return meta, sequences


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (masked entries are -inf)."""
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def rel_err(out_hat: np.ndarray, out: np.ndarray) -> np.ndarray:
    """||out_hat - out|| / ||out|| over the last axis, in double as kvsim does."""
    diff = np.sum((out_hat.astype(np.float64) - out) ** 2, axis=-1)
    norm = np.sum(out.astype(np.float64) ** 2, axis=-1)
    return np.sqrt(np.where(norm > 0, diff / np.where(norm > 0, norm, 1), diff))


def quantize(x: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """kvsim's asymmetric min/max quantizer (policies/quantizer.cc) along `axis`, dequantized."""
    max_code = np.float32(2**bits - 1)
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    mn = lo.astype(np.float16).astype(np.float32)
    scale = ((hi - lo) / max_code).astype(np.float16).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    code = np.where(scale > 0, np.rint(np.clip((x - mn) / safe, 0, max_code)), np.float32(0))
    return (code * scale + mn).astype(np.float32)


def kivi_tables(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every token's KIVI-dequantized key (groups of 32 tokens per channel) and value (groups
    of 32 channels per token); a key group exists only where all its tokens do."""
    hkv, t, d = k.shape
    whole = t // KIVI_GROUP * KIVI_GROUP
    kq = k.copy()
    blocks = k[:, :whole].reshape(hkv, whole // KIVI_GROUP, KIVI_GROUP, d)
    kq[:, :whole] = quantize(blocks, 2, KIVI_BITS).reshape(hkv, whole, d)
    vq = quantize(v.reshape(hkv, t, d // KIVI_GROUP, KIVI_GROUP), 3, KIVI_BITS).reshape(hkv, t, d)
    return kq, vq


def kivi_boundaries(prompt_len: int, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first fp16 key and value position at each step (kivi.cc: keys flushed in blocks of
    R once R are pending, values a FIFO of R)."""
    n = steps + 1
    flushed_at_prefill = prompt_len - prompt_len % KIVI_RESIDUAL
    pending = (n - flushed_at_prefill - 1) % KIVI_RESIDUAL + 1
    return n - pending, np.maximum(0, n - KIVI_RESIDUAL)


def snapkv_keep(q: np.ndarray, k: np.ndarray, prompt_len: int, scale: float) -> np.ndarray:
    """The prompt positions SnapKV keeps, [kv heads, P] booleans."""
    hkv, P = k.shape[0], prompt_len
    budget = max(1, fraction_tokens(SNAPKV_RATIO, P))
    keep = np.ones((hkv, P), dtype=bool)
    if P <= budget:
        return keep
    group = q.shape[0] // hkv
    rows = np.arange(P - min(SNAPKV_WINDOW, P), P)
    qw = q[:, rows].reshape(hkv, group * len(rows), -1)
    scores = (qw @ k[:, :P].transpose(0, 2, 1)) * np.float32(scale)
    future = np.arange(P)[None, :] > np.tile(rows, group)[:, None]
    attention = softmax(np.where(future, -np.inf, scores)).astype(np.float64).sum(axis=1)
    recent = min(SNAPKV_WINDOW, budget)
    eligible = P - recent
    padded = np.pad(attention[:, :eligible], ((0, 0), (SNAPKV_KERNEL // 2,) * 2),
                    constant_values=-np.inf)
    pooled = np.lib.stride_tricks.sliding_window_view(padded, SNAPKV_KERNEL, axis=1).max(axis=2)
    positions = np.broadcast_to(np.arange(eligible), pooled.shape)
    order = np.lexsort((-positions, -pooled), axis=1)  # best first; ties: higher position
    keep[:, :eligible] = False
    np.put_along_axis(keep, order[:, : budget - recent], True, axis=1)
    return keep


def shapes(seq: dict) -> tuple[int, int, int, int, int, int]:
    """layers, query heads, tokens, head_dim, kv heads and the GQA group of a sequence."""
    L, hq, T, d = seq["q"].shape
    hkv = seq["k"].shape[1]
    return L, hq, T, d, hkv, hq // hkv


def replay_static(seq: dict, meta: dict, policy: str) -> np.ndarray:
    """full, kivi and snapkv: the cache at every measured step is known in advance, so every
    step and head is one batched product. Returns rel_err [layers, q heads, steps]."""
    q, k, v, P = seq["q"], seq["k"], seq["v"], seq["prompt_len"]
    L, hq, T, d, hkv, group = shapes(seq)
    scale = np.float32(meta["attn_scale"])
    steps = measured_steps(P, T)
    m = len(steps)
    positions = np.arange(T)
    future = positions[None, :] > steps[:, None]  # [m, T]
    out = np.empty((L, hq, m))
    for layer in range(L):  # a loop over layers only: each is one batch of every head and step
        ql = q[layer][:, steps].reshape(hkv, group * m, d)
        kl, vl = k[layer], v[layer]
        exact_scores = (ql @ kl.transpose(0, 2, 1)) * scale  # [hkv, group*m, T]
        mask = np.tile(future, (group, 1))[None]
        exact = softmax(np.where(mask, -np.inf, exact_scores)) @ vl
        if policy == "full":  # the fp16 cache holds the trace's own values: attend again
            approx = softmax(np.where(mask, -np.inf, (ql @ kl.transpose(0, 2, 1)) * scale)) @ vl
        elif policy == "snapkv":
            kept = snapkv_keep(q[layer], kl, P, float(scale))
            dropped = np.concatenate([~kept, np.zeros((hkv, T - P), dtype=bool)], axis=1)
            approx = softmax(np.where(mask | dropped[:, None], -np.inf, exact_scores)) @ vl
        else:  # kivi: quantized below the residual boundaries, the trace's values above
            kq, vq = kivi_tables(kl, vl)
            key_edge, value_edge = kivi_boundaries(P, steps)
            quantized_key = np.tile(positions[None, :] < key_edge[:, None], (group, 1))[None]
            scores = np.where(quantized_key, (ql @ kq.transpose(0, 2, 1)) * scale, exact_scores)
            p = softmax(np.where(mask, -np.inf, scores))
            quantized_value = np.tile(positions[None, :] < value_edge[:, None], (group, 1))[None]
            approx = np.where(quantized_value, p, 0) @ vq + np.where(quantized_value, 0, p) @ vl
        out[layer] = rel_err(approx, exact).reshape(hq, m)
    return out


def replay_h2o(seq: dict, meta: dict) -> np.ndarray:
    """H2O: the prefill column sums as batched products, then one Python iteration per decode
    step, vectorised over layers and heads. Returns rel_err [layers, q heads, steps]."""
    q, k, v, P = seq["q"], seq["k"], seq["v"], seq["prompt_len"]
    L, hq, T, d, hkv, group = shapes(seq)
    scale = np.float32(meta["attn_scale"])
    heavy = fraction_tokens(H2O_HEAVY, P)
    recent = max(1, fraction_tokens(H2O_RECENT, P))
    positions = np.arange(T)
    qg = q.reshape(L, hkv, group, T, d)
    # Accumulated attention per (layer, kv head, position): every prompt row, in row blocks.
    accumulated = np.zeros((L, hkv, T))
    for r0 in range(0, P, 512):
        rows = np.arange(r0, min(P, r0 + 512))
        qb = qg[:, :, :, rows].reshape(L, hkv, group * len(rows), d)
        scores = (qb @ k[:, :, :P].transpose(0, 1, 3, 2)) * scale
        future = positions[None, :P] > np.tile(rows, group)[:, None]
        accumulated[:, :, :P] += softmax(np.where(future, -np.inf, scores)).sum(axis=2)
    cached = np.zeros((L, hkv, T), dtype=bool)
    cached[:, :, :P] = True

    def evict(step: int, arriving: bool) -> None:
        eligible = cached & (positions < step - recent + 1)
        if arriving:
            eligible[:, :, step] = False
        surplus = eligible.sum(axis=2) - heavy
        if not (surplus > 0).any():
            return
        key = np.where(eligible, accumulated, np.inf)
        if surplus.max() == 1:  # the decode case: one entry leaves; argmin's first = lowest position
            worst = key.argmin(axis=2)[..., None]
            np.put_along_axis(cached, worst, ~(surplus[..., None] > 0) & np.take_along_axis(
                cached, worst, axis=2), axis=2)
            return
        order = np.lexsort((np.broadcast_to(positions, key.shape), key), axis=2)  # worst first
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(T)[None, None], axis=2)
        cached[rank < surplus[..., None]] = False

    evict(P - 1, arriving=False)
    steps = measured_steps(P, T)
    out = np.empty((L, hq, len(steps)))
    m = 0
    for t in range(P, T):
        cached[:, :, t] = True
        evict(t, arriving=True)
        qt = qg[:, :, :, t]  # [L, hkv, group, d]
        scores = (qt @ k[:, :, : t + 1].transpose(0, 1, 3, 2)) * scale
        probs = softmax(np.where(cached[:, :, None, : t + 1], scores, -np.inf))
        accumulated[:, :, : t + 1] += probs.sum(axis=2)
        if m < len(steps) and steps[m] == t:
            exact = softmax(scores) @ v[:, :, : t + 1]
            approx = probs @ v[:, :, : t + 1]
            out[:, :, m] = rel_err(approx, exact).reshape(L, hq)
            m += 1
    return out


def replay(path: str, policy: str) -> tuple[np.ndarray, dict]:
    """Replays every sequence; returns the records (sequence, layer, q_head, step, rel_err) as
    a structured array, and the seconds spent reading and replaying."""
    t0 = time.perf_counter()
    meta, sequences = read_trace(path)
    t1 = time.perf_counter()
    records = []
    for s, seq in enumerate(sequences):
        err = replay_h2o(seq, meta) if policy == "h2o" else replay_static(seq, meta, policy)
        steps = measured_steps(seq["prompt_len"], seq["q"].shape[2])
        L, hq, m = err.shape
        grid = np.meshgrid(np.arange(L), np.arange(hq), np.arange(m), indexing="ij")
        rec = np.zeros(err.size, dtype=[("sequence", "i4"), ("layer", "i4"), ("q_head", "i4"),
                                        ("step", "i4"), ("rel_err", "f8")])
        rec["sequence"] = s
        rec["layer"] = meta["layer_ids"][grid[0].ravel()]
        rec["q_head"] = grid[1].ravel()
        rec["step"] = steps[grid[2].ravel()]
        rec["rel_err"] = err.ravel()
        records.append(rec)
    t2 = time.perf_counter()
    return np.concatenate(records), {"read_seconds": t1 - t0, "replay_seconds": t2 - t1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("policy", choices=POLICIES)
    parser.add_argument("--out", help="write the records to this .npz file")
    args = parser.parse_args()
    records, seconds = replay(args.trace, args.policy)
    if args.out:
        np.savez(args.out, records=records, **seconds)
    print(f"{args.policy}: {len(records)} records, mean rel_err {records['rel_err'].mean():.6g}, "
          f"read {seconds['read_seconds']:.3f} s, replay {seconds['replay_seconds']:.3f} s")


if __name__ == "__main__":
    main()
