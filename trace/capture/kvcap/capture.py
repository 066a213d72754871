"""Run a model over a prompt, then decode N tokens with its KV cache, recording attention.

`capture_sequence` returns the recorded post-RoPE q/k/v of every stored layer as
[L, H, T, d] float32 arrays (T = prompt + generated tokens). The continuation is the
model's own: greedy (argmax) by default, or sampled with a seeded generator; every
generated token is fed back, so decode-step q/k/v are those of a real generation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .hook import AttentionRecorder, stack


@dataclass
class Captured:
    token_ids: list[int]
    prompt_len: int
    layers: list[int]
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    out: dict = field(default_factory=dict)  # layer -> [Hq, T, d] attention outputs (if recorded)
    forward_calls: int = 0


def text_config(config):
    """The decoder config (multimodal wrappers keep it under text_config)."""
    return getattr(config, "get_text_config", lambda: config)() or config


def config_windows(config) -> list[int]:
    """Window per layer from the config (0 = full attention)."""
    cfg = text_config(config)
    n = int(cfg.num_hidden_layers)
    sw = int(getattr(cfg, "sliding_window", None) or 0)
    types = getattr(cfg, "layer_types", None)
    if types:
        out = []
        for t in types:
            if t == "sliding_attention":
                out.append(sw)
            elif t == "full_attention":
                out.append(0)
            else:
                raise ValueError(f"layer type {t!r} is not representable in a kvsim trace "
                                 "(full and sliding-window attention only)")
        return out
    if sw and getattr(cfg, "use_sliding_window", True):
        return [sw] * n
    return [0] * n


def rope_theta(config) -> tuple[float, dict]:
    """(theta of the full-attention layers, {layer_type: theta}) from either config style."""
    cfg = text_config(config)
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    per = {}
    if isinstance(rp, dict):
        if "rope_theta" in rp:
            per["default"] = float(rp["rope_theta"])
        for k, v in rp.items():
            if isinstance(v, dict) and "rope_theta" in v:
                per[k] = float(v["rope_theta"])
    if not per and getattr(cfg, "rope_theta", None) is not None:
        per["default"] = float(cfg.rope_theta)
    if getattr(cfg, "rope_local_base_freq", None) is not None and "sliding_attention" not in per:
        per["sliding_attention"] = float(cfg.rope_local_base_freq)
    main = per.get("full_attention", per.get("default", next(iter(per.values()), 0.0)))
    return float(main), per


def eos_ids(model, tok) -> list[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    if tok is not None and getattr(tok, "eos_token_id", None) is not None:
        ids.add(int(tok.eos_token_id))
    return sorted(ids)


def _choose(logits, sample: bool, temperature: float, top_k: int, top_p: float, generator, banned):
    import torch
    logits = logits.float().clone()
    if banned:
        logits[banned] = float("-inf")
    if not sample:
        return int(torch.argmax(logits))
    logits = logits / max(temperature, 1e-6)
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[si[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def capture_sequence(model, recorder: AttentionRecorder, input_ids, new_tokens: int, *, sample=False,
                     temperature=1.0, top_k=0, top_p=1.0, seed=0, banned_ids=(), on_step=None,
                     forced_ids=()) -> Captured:
    """Prefill `input_ids`, then `new_tokens` decode steps. The first decode steps feed
    forced_ids (a reference continuation, teacher-forced), the rest the model's own
    choice. on_step(k) is called after each forward pass with the number of tokens it
    processed."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older transformers
        cache = DynamicCache()
    prompt = [int(t) for t in input_ids]
    if not prompt:
        raise ValueError("empty prompt")
    tokens = list(prompt)
    recorder.start_sequence()
    calls0 = recorder.calls
    try:
        with torch.inference_mode():
            ids = torch.tensor([prompt], device=device)
            kw = {"past_key_values": cache, "use_cache": True}
            try:
                out = model(input_ids=ids, logits_to_keep=1, **kw)
            except TypeError:
                out = model(input_ids=ids, **kw)
            if on_step:
                on_step(len(prompt))
            for step in range(new_tokens):
                if step < len(forced_ids):
                    nxt = int(forced_ids[step])
                else:
                    nxt = _choose(out.logits[0, -1], sample, temperature, top_k, top_p, gen,
                                  list(banned_ids))
                tokens.append(nxt)
                out = model(input_ids=torch.tensor([[nxt]], device=device), **kw)
                if on_step:
                    on_step(1)
    finally:
        rec = recorder.finish_sequence()
    T = len(tokens)
    layers = sorted(rec.q)
    for l in layers:
        if rec.positions[l] != T:
            raise RuntimeError(f"layer {l}: recorded {rec.positions[l]} tokens, expected {T}")
    if not layers:
        raise RuntimeError("no attention call was recorded: the model does not use transformers' "
                           "AttentionInterface (unsupported architecture) or --layers selects none")
    def gather(chunks: dict) -> np.ndarray:
        # layer by layer, freeing the chunks as we go: peak memory ~1x the sequence, not 2x
        first = chunks[layers[0]][0]
        arr = np.empty((len(layers), first.shape[0], T, first.shape[2]), dtype=np.float32)
        for i, l in enumerate(layers):
            arr[i] = stack(chunks.pop(l))
        return arr
    q, k, v = gather(rec.q), gather(rec.k), gather(rec.v)
    out = {l: stack(rec.out[l]) for l in rec.out}
    return Captured(tokens, len(prompt), layers, q, k, v, out, recorder.calls - calls0)


def answer_found(answer: str, text: str, user_prompt: bool) -> int:
    """1 when `text` contains the expected answer, 0 when not, -1 when there is none. A
    built-in prompt's answer may list variants ("7,seven"): the first is expected; a
    researcher's answer is expected whole. The capture's `answer_found` and the live mode's
    `answer_correct` (analysis/kvsim/live) both use this rule."""
    expected = answer.strip() if user_prompt else answer.split(",")[0]
    if not expected:
        return -1
    return int(expected in text)


def trace_meta(model, recorder: AttentionRecorder, layers: list[int], ref) -> dict:
    """Root metadata for the trace from the config and what attention actually received."""
    cfg = text_config(model.config)
    n_layers = int(cfg.num_hidden_layers)
    infos = [recorder.layer_info[l] for l in layers]
    for name in ("num_q_heads", "num_kv_heads", "head_dim"):
        vals = {getattr(i, name) for i in infos}
        if len(vals) != 1:
            raise ValueError(f"{name} differs between layers ({sorted(vals)}): not representable in one trace")
    scales = {round(i.scaling, 12) for i in infos}
    if len(scales) != 1:
        raise ValueError(f"attention scale differs between layers ({sorted(scales)})")
    if any(i.softcap for i in infos):
        raise ValueError("this model soft-caps attention logits, which a kvsim trace cannot represent")
    cfg_w = config_windows(model.config)
    windows = []
    for i in infos:
        w = i.sliding_window
        if w != cfg_w[i.layer_idx]:
            raise ValueError(f"layer {i.layer_idx}: attention received sliding_window={w} but the config says "
                             f"{cfg_w[i.layer_idx]}")
        windows.append(w)
    theta, per = rope_theta(model.config)
    extra = {}
    if len(per) > 1:
        extra["rope_theta_by_layer_type"] = ", ".join(f"{k}={v:g}" for k, v in per.items())
    return {
        "model_name": ref.model_name, "model_source": ref.source, "num_model_layers": n_layers,
        "num_q_heads": infos[0].num_q_heads, "num_kv_heads": infos[0].num_kv_heads,
        "head_dim": infos[0].head_dim, "attn_scale": infos[0].scaling, "rope_theta": theta,
        "layer_ids": layers, "sliding_window": windows, "extra": extra,
    }
