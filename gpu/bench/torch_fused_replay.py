#!/usr/bin/env python3
"""A straightforward PyTorch implementation of gpu::fused_replay_attention, to time against it.

What one replayed (layer, decode step) costs when written the obvious way with PyTorch ops:
unpack the KIVI words with shifts and masks, dequantize to float32, append the fp16 residual,
then run the compressed and the exact attention as batched matmuls + softmax and derive the
metrics (rel_err, cosine, KL, mass). Same shapes, same packed layout (gpu/packing.h) and the
same byte count as BM_GpuFusedReplay in gpu/bench/gpu_bench.cc, so the two bytes/s figures
compare directly (see docs/gpu.md). All tokens are present (mass = 1).

    python3 gpu/bench/torch_fused_replay.py --tokens 4096 32768 131072            # CUDA
    python3 gpu/bench/torch_fused_replay.py --device cpu --tokens 4096 --iters 3  # smoke test

Prints one line per size: median milliseconds per step and bytes/s.
"""
import argparse
import math
import statistics
import time

import torch


def pack_rows(codes, bits):
    """codes [..., L] int32 (< 2^bits) -> words [..., ceil(L / cpw)] int32, KIVI order."""
    cpw = 32 // bits
    length = codes.shape[-1]
    blocks = (length + cpw - 1) // cpw
    padded = torch.nn.functional.pad(codes, (0, blocks * cpw - length))
    padded = padded.view(*codes.shape[:-1], blocks, cpw)
    words = torch.zeros(padded.shape[:-1], dtype=torch.int32, device=codes.device)
    for s in range(cpw):
        words |= padded[..., s] << (s * bits)
    return words


def unpack_rows(words, bits, length):
    """Inverse of pack_rows: words [..., W] -> codes [..., length] int32."""
    cpw = 32 // bits
    shifts = torch.arange(cpw, device=words.device, dtype=torch.int32) * bits
    codes = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.flatten(-2)[..., :length]


def rtn(x, mn, mx, bits):
    """The min/max rule with fp16 scale and min; x, mn, mx broadcast together."""
    levels = float((1 << bits) - 1)
    scale = ((mx - mn) / levels).half().float()
    mn16 = mn.half().float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round((x - mn16) / safe), 0, levels)
    codes = torch.where(scale > 0, codes, torch.zeros_like(codes)).to(torch.int32)
    return codes, scale.half(), mn16.half()


def quantize_keys(k, group, bits):
    """k [H, n, d], n % group == 0 -> words [H, blocks, d], scale/min [H, n / group, d]."""
    h, n, d = k.shape
    kg = k.view(h, n // group, group, d)
    codes, scale, mn = rtn(kg, kg.amin(2, keepdim=True), kg.amax(2, keepdim=True), bits)
    codes = codes.view(h, n, d).transpose(1, 2)  # pack along tokens
    words = pack_rows(codes.contiguous(), bits).transpose(1, 2).contiguous()
    return words, scale.squeeze(2), mn.squeeze(2)


def quantize_values(v, group, bits):
    """v [H, n, d], d % group == 0 -> words [H, n, d / cpw], scale/min [H, n, d / group]."""
    h, n, d = v.shape
    vg = v.view(h, n, d // group, group)
    codes, scale, mn = rtn(vg, vg.amin(3, keepdim=True), vg.amax(3, keepdim=True), bits)
    return pack_rows(codes.view(h, n, d), bits), scale.squeeze(3), mn.squeeze(3)


def fused_step(q, c, args):
    """One replayed step: both attentions and the metrics, per query head."""
    hkv, d, bits, g = args.kv_heads, args.head_dim, args.bits, args.group
    nq = c["nq"]
    # Compressed cache: unpack, dequantize, append the residual.
    kc = unpack_rows(c["k_words"].transpose(1, 2), bits, nq).transpose(1, 2).float()  # [H, nq, d]
    k_hat = kc.view(hkv, nq // g, g, d) * c["k_scale"].float().unsqueeze(2) + c[
        "k_min"].float().unsqueeze(2)
    vc = unpack_rows(c["v_words"], bits, d).float()  # [H, nq, d]
    v_hat = vc.view(hkv, nq, d // g, g) * c["v_scale"].float().unsqueeze(3) + c[
        "v_min"].float().unsqueeze(3)
    k_hat = torch.cat([k_hat.view(hkv, nq, d), c["k_res"].float()], dim=1)
    v_hat = torch.cat([v_hat.view(hkv, nq, d), c["v_res"].float()], dim=1)
    k_ex = c["k_ex"].float()
    v_ex = c["v_ex"].float()

    qg = q.view(hkv, args.q_heads // hkv, d)
    scale = 1.0 / math.sqrt(d)
    raw = scale * torch.bmm(qg, k_ex.transpose(1, 2))  # [Hkv, qpk, n]
    s = scale * torch.bmm(qg, k_hat.transpose(1, 2))
    logp = torch.log_softmax(raw, dim=-1)
    logp_hat = torch.log_softmax(s, dim=-1)
    p = logp.exp()
    out = torch.bmm(p, v_ex)
    out_hat = torch.bmm(logp_hat.exp(), v_hat)
    kl = (p * (logp - logp_hat)).sum(-1)
    mass = p.sum(-1)
    diff = (out_hat - out).norm(dim=-1)
    on = out.norm(dim=-1)
    rel_err = diff / on
    cosine = (out * out_hat).sum(-1) / (on * out_hat.norm(dim=-1))
    lse = torch.logsumexp(raw, dim=-1)
    lse_hat = torch.logsumexp(s, dim=-1)
    return out, out_hat, lse, lse_hat, rel_err, cosine, kl, mass


def fused_bytes(args, nq, nr, exact_bytes):
    """The byte count of BM_GpuFusedReplay (gpu/bench/gpu_bench.cc)."""
    hkv, d, bits, g, hq = args.kv_heads, args.head_dim, args.bits, args.group, args.q_heads
    cpw = 32 // bits
    key = hkv * (((nq + cpw - 1) // cpw) * d * 4 + ((nq + g - 1) // g) * d * 4)
    value = hkv * nq * (((d + cpw - 1) // cpw) * 4 + ((d + g - 1) // g) * 4)
    n = nq + nr
    return (key + value + hkv * nr * d * 2 * 2 + hkv * n * d * exact_bytes * 2 + hq * d * 4 +
            hq * (2 * d + 6) * 4)


def make_cache(args, n, device):
    gen = torch.Generator(device="cpu").manual_seed(1)
    hkv, d = args.kv_heads, args.head_dim
    nr = args.residual
    nq = n - nr
    exact_dtype = torch.float16 if args.exact == "fp16" else torch.float32
    k = (torch.rand(hkv, n, d, generator=gen) * 2 - 1).to(device)
    v = (torch.rand(hkv, n, d, generator=gen) * 2 - 1).to(device)
    k_words, k_scale, k_min = quantize_keys(k[:, :nq].contiguous(), args.group, args.bits)
    v_words, v_scale, v_min = quantize_values(v[:, :nq].contiguous(), args.group, args.bits)
    cache = {
        "nq": nq,
        "k_words": k_words, "k_scale": k_scale, "k_min": k_min,
        "v_words": v_words, "v_scale": v_scale, "v_min": v_min,
        "k_res": k[:, nq:].half().contiguous(), "v_res": v[:, nq:].half().contiguous(),
        "k_ex": k.to(exact_dtype).contiguous(), "v_ex": v.to(exact_dtype).contiguous(),
    }
    q = (torch.rand(args.q_heads, d, generator=gen) * 2 - 1).to(device)
    return q, cache, nq, nr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 32768, 131072])
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--bits", type=int, default=2, choices=[1, 2, 4, 8])
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--residual", type=int, default=128)
    parser.add_argument("--exact", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    for n in args.tokens:
        if (n - args.residual) % args.group or args.head_dim % args.group:
            raise SystemExit("tokens - residual and head_dim must be multiples of --group")
        q, cache, nq, nr = make_cache(args, n, device)
        with torch.no_grad():
            result = fused_step(q, cache, args)  # warm-up
            kl, mass = result[6], result[7]
            if not (torch.isfinite(kl).all() and (kl >= -1e-6).all() and
                    torch.allclose(mass, torch.ones_like(mass), atol=1e-4)):
                raise SystemExit("sanity check failed: kl must be finite and >= 0, mass 1")
            times = []
            for _ in range(args.iters):
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    stop = torch.cuda.Event(enable_timing=True)
                    start.record()
                    fused_step(q, cache, args)
                    stop.record()
                    stop.synchronize()
                    times.append(start.elapsed_time(stop) * 1e-3)
                else:
                    t0 = time.perf_counter()
                    fused_step(q, cache, args)
                    times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        nbytes = fused_bytes(args, nq, nr, 2 if args.exact == "fp16" else 4)
        print(f"torch_fused_replay tokens={n} exact={args.exact} device={device}: "
              f"{t * 1e3:.3f} ms/step, {nbytes / t / 1e9:.2f} GB/s "
              f"(mean kl {kl.mean().item():.3e})")


if __name__ == "__main__":
    main()
