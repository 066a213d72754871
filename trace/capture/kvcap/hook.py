"""Record what attention consumes, through transformers' AttentionInterface.

`AttentionRecorder` registers an attention function under its own name in
`ALL_ATTENTION_FUNCTIONS` (and the matching mask function in
`ALL_MASK_ATTENTION_FUNCTIONS`, so the model builds the same masks as for the base
implementation), switches the model to it, and restores the model on exit. The function
copies the query, key and value tensors it is given, then calls the base
implementation (`sdpa` or the model's own `eager`) with exactly the same arguments, so
the model's outputs are unchanged.

What attention is given, per layer (module.layer_idx), with shapes [batch, heads, tokens, d]:
- query: the new tokens' queries, after RoPE (and, for Gemma 3, after the QK-norm);
- key/value: the cache's keys/values *after* `past_key_values.update`, i.e. the past
  tokens followed by the new ones, with Hkv heads (GQA's repeat_kv happens inside the
  attention function, after we copy). The new tokens are the last `q_len` positions,
  which is what we keep: with a DynamicCache (the one capture uses), both full and
  sliding-window layers append the new tokens at the end.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

_REG_LOCK = threading.Lock()
_ACTIVE: dict[str, "AttentionRecorder"] = {}


def _impl_name(base: str) -> str:
    return f"kvsim_capture_{base}"


@dataclass
class LayerInfo:
    """What the attention function saw for one layer (checked identical on every call)."""
    layer_idx: int
    scaling: float
    sliding_window: int  # 0 = full attention
    softcap: float | None
    num_q_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass
class SequenceRecord:
    """Per-layer chunks of one sequence, in call order (prefill, then one per decode step)."""
    q: dict[int, list[np.ndarray]] = field(default_factory=dict)
    k: dict[int, list[np.ndarray]] = field(default_factory=dict)
    v: dict[int, list[np.ndarray]] = field(default_factory=dict)
    out: dict[int, list[np.ndarray]] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)


def _to_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(device="cpu", dtype=torch.float32).numpy().copy()


class AttentionRecorder:
    """Context manager that records q/k/v (and optionally attention outputs) per layer.

    layers: original layer indices to keep (None = all). record_outputs: also keep the
    attention function's output per layer ([heads, tokens, d]), for validation.
    """

    def __init__(self, model, layers=None, base: str | None = None, record_outputs: bool = False):
        self.model = model
        self.layers = None if layers is None else set(int(l) for l in layers)
        cfg = model.config
        cur = getattr(cfg, "_attn_implementation", None) or "sdpa"
        if base is None:
            base = cur if cur in ("sdpa", "eager") else "sdpa"
        if base not in ("sdpa", "eager"):
            raise ValueError(f"base attention must be 'sdpa' or 'eager', not {base!r}")
        self.base = base
        self.name = _impl_name(base)
        self.record_outputs = record_outputs
        self.layer_info: dict[int, LayerInfo] = {}
        self.seq: SequenceRecord | None = None
        self._prev_impl = cur
        self.calls = 0

    # -- registration ------------------------------------------------------------------
    def _base_fn(self, module):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        if self.base == "sdpa":
            return ALL_ATTENTION_FUNCTIONS["sdpa"]
        mod = sys.modules.get(type(module).__module__)
        fn = getattr(mod, "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"{type(module).__name__}: no eager_attention_forward in {type(module).__module__}")
        return fn

    def _make_fn(self):
        name = self.name

        def kvsim_capture_attention(module, query, key, value, attention_mask, *args, **kwargs):
            rec = _ACTIVE.get(name)
            if rec is None:  # the model was left switched to us after its recorder exited
                raise RuntimeError("kvsim capture attention called outside an AttentionRecorder")
            return rec._call(module, query, key, value, attention_mask, *args, **kwargs)

        return kvsim_capture_attention

    def __enter__(self):
        from transformers.modeling_utils import AttentionInterface
        try:
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        except ImportError:  # older transformers: masks did not depend on the implementation name
            ALL_MASK_ATTENTION_FUNCTIONS = AttentionMaskInterface = None
        with _REG_LOCK:
            if self.name in _ACTIVE:
                raise RuntimeError("another AttentionRecorder with the same base is active")
            AttentionInterface.register(self.name, self._make_fn())
            if AttentionMaskInterface is not None:
                # Without a mask function for our name, transformers would build *no* mask
                # (it treats unknown implementations as mask-free backends).
                AttentionMaskInterface.register(self.name, ALL_MASK_ATTENTION_FUNCTIONS[self.base])
            _ACTIVE[self.name] = self
        self._set_impl(self.name)
        return self

    def __exit__(self, *exc):
        self._set_impl(self._prev_impl)
        with _REG_LOCK:
            _ACTIVE.pop(self.name, None)
        return False

    def _set_impl(self, name: str):
        m = self.model
        if hasattr(m, "set_attn_implementation"):
            try:
                m.set_attn_implementation(name)
            except Exception:
                m.config._attn_implementation = name
        else:
            m.config._attn_implementation = name
        if getattr(m.config, "_attn_implementation", None) != name:
            m.config._attn_implementation = name
        # text sub-configs of multimodal wrappers
        for sub in ("text_config",):
            c = getattr(m.config, sub, None)
            if c is not None and getattr(c, "_attn_implementation", None) != name:
                try:
                    c._attn_implementation = name
                except Exception:
                    pass

    # -- recording ----------------------------------------------------------------------
    def start_sequence(self) -> None:
        self.seq = SequenceRecord()

    def finish_sequence(self) -> SequenceRecord:
        s, self.seq = self.seq, None
        if s is None:
            raise RuntimeError("finish_sequence without start_sequence")
        return s

    def _call(self, module, query, key, value, attention_mask, *args, **kwargs):
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise RuntimeError(f"{type(module).__name__} has no layer_idx; cannot attribute attention calls")
        layer = int(layer)
        scaling = kwargs.get("scaling", getattr(module, "scaling", None))
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        window = kwargs.get("sliding_window", None)
        if window is None:
            window = getattr(module, "sliding_window", None)
        window = int(window) if window else 0
        softcap = kwargs.get("softcap", None)
        info = LayerInfo(layer, float(scaling), window, softcap, int(query.shape[1]), int(key.shape[1]),
                         int(query.shape[-1]))
        old = self.layer_info.get(layer)
        if old is None:
            self.layer_info[layer] = info
        elif old != info:
            raise RuntimeError(f"layer {layer}: attention parameters changed between calls: {old} -> {info}")

        out = self._base_fn(module)(module, query, key, value, attention_mask, *args, **kwargs)
        self.calls += 1
        if self.seq is None or (self.layers is not None and layer not in self.layers):
            return out
        if query.shape[0] != 1:
            raise RuntimeError("capture records batch size 1 only")
        q_len = query.shape[2]
        if key.shape[2] < q_len:
            raise RuntimeError(f"layer {layer}: key has {key.shape[2]} positions for {q_len} queries")
        s = self.seq
        s.q.setdefault(layer, []).append(_to_np(query[0]))
        s.k.setdefault(layer, []).append(_to_np(key[0, :, key.shape[2] - q_len:]))
        s.v.setdefault(layer, []).append(_to_np(value[0, :, value.shape[2] - q_len:]))
        s.positions[layer] = s.positions.get(layer, 0) + q_len
        if self.record_outputs:
            attn = out[0] if isinstance(out, tuple) else out  # [batch, tokens, heads, d]
            s.out.setdefault(layer, []).append(_to_np(attn[0].transpose(0, 1)))
        return out


def stack(chunks: list[np.ndarray]) -> np.ndarray:
    """[heads, t_i, d] chunks -> [heads, T, d]."""
    return np.concatenate(chunks, axis=1)
