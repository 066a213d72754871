#!/usr/bin/env python3
"""A straightforward PyTorch replay of the ``full`` policy, to time the CUDA backend against.

The shape of ``kvsim_bench``'s ``BM_EndToEndReplay`` (sim/bench/backend_bench.cc): 32 layers,
32 query / 8 kv heads, head_dim 128, 4096 tokens of which the last 256 are decoded and every
16th of them measured. Per layer, written the obvious way with PyTorch ops: the exact attention
at the measured steps (a masked matmul + softmax over the causal window), then the decode loop
-- the cache grows by one row per step; at a measured step the cache's attention and the
metrics (rel_err, cosine, kept mass, KL, top-1 agreement) -- with the per-step results copied
to the host as the engine's records are. Random Q/K/V stand in for the synthetic trace (the
work does not depend on the values).

    python3 gpu/bench/torch_replay.py                                    # CUDA, the full shape
    python3 gpu/bench/torch_replay.py --device cpu --layers 1 --tokens 256 --decode 32  # smoke

Prints the seconds of the whole replay and layers/s, to compare with BM_EndToEndReplay/cuda_full.
"""
from __future__ import annotations

import argparse
import time

import torch


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, steps: list[int],
                    scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs [m, Hq, d], log-sum-exps [m, Hq] and top positions [m, Hq] at `steps`."""
    hq, _, d = q.shape
    group = hq // k.shape[0]
    kk = k.repeat_interleave(group, 0)  # [Hq, T, d]
    vv = v.repeat_interleave(group, 0)
    outs, lses, tops = [], [], []
    for t in steps:
        s = torch.einsum("hd,hnd->hn", q[:, t], kk[:, : t + 1]) * scale
        lse = torch.logsumexp(s.double(), -1)
        p = torch.softmax(s, -1)
        outs.append(torch.einsum("hn,hnd->hd", p, vv[:, : t + 1]))
        lses.append(lse)
        tops.append(s.argmax(-1))
    return torch.stack(outs), torch.stack(lses), torch.stack(tops)


def replay_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prompt: int,
                 steps: list[int], scale: float) -> list[torch.Tensor]:
    """The `full` policy's decode loop over one layer; returns the per-step records (host)."""
    hq, tokens, d = q.shape
    hkv = k.shape[0]
    group = hq // hkv
    out, lse, top = exact_attention(q, k, v, steps, scale)
    cache_k = torch.empty_like(k)
    cache_v = torch.empty_like(v)
    cache_k[:, :prompt] = k[:, :prompt]
    cache_v[:, :prompt] = v[:, :prompt]
    records, m = [], 0
    for t in range(prompt, tokens):
        cache_k[:, t] = k[:, t]  # the store: append the new row
        cache_v[:, t] = v[:, t]
        if m >= len(steps) or steps[m] != t:
            continue
        ck = cache_k[:, : t + 1].repeat_interleave(group, 0)
        cv = cache_v[:, : t + 1].repeat_interleave(group, 0)
        s_hat = torch.einsum("hd,hnd->hn", q[:, t], ck) * scale
        lse_hat = torch.logsumexp(s_hat.double(), -1)
        p_hat = torch.softmax(s_hat, -1)
        o_hat = torch.einsum("hn,hnd->hd", p_hat, cv)
        raw = torch.einsum("hd,hnd->hn", q[:, t], k[:, : t + 1].repeat_interleave(group, 0)) * scale
        p = torch.exp(raw.double() - lse[m, :, None])
        mass = p.sum(-1)
        kl = (p * (raw - s_hat).double()).sum(-1) / mass + lse_hat - lse[m] - torch.log(mass)
        rel = (o_hat - out[m]).norm(dim=-1) / out[m].norm(dim=-1)
        cos = torch.nn.functional.cosine_similarity(o_hat, out[m], dim=-1)
        agree = (s_hat.argmax(-1) == top[m]).int()
        records.append(torch.stack([rel.double(), cos.double(), mass, kl, agree.double()]).cpu())
        m += 1
    return records


def main() -> None:
    """Times the replay of every layer and prints the totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--decode", type=int, default=256)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    prompt = args.tokens - args.decode
    steps = list(range(prompt, args.tokens, args.stride))
    scale = args.head_dim ** -0.5
    gen = torch.Generator(device="cpu").manual_seed(0)
    total = 0.0
    records = 0
    for _ in range(args.layers):
        host = [torch.randn(h, args.tokens, args.head_dim, generator=gen)
                for h in (args.q_heads, args.kv_heads, args.kv_heads)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()  # the upload is timed, as in kvsim's replay
        q, k, v = (x.to(device) for x in host)
        records += len(replay_layer(q, k, v, prompt, steps, scale))
        if device.type == "cuda":
            torch.cuda.synchronize()
        total += time.perf_counter() - start
    print(f"torch_replay layers={args.layers} tokens={args.tokens} decode={args.decode} "
          f"stride={args.stride} device={args.device}: {total:.3f} s, "
          f"{args.layers / total:.2f} layers/s ({records} measured steps)")


if __name__ == "__main__":
    main()
