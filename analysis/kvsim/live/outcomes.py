"""Closed-loop outcomes of one policy on one sequence (docs/closed-loop.md).

The prompts and the reference continuation come from a trace written by
trace/capture/kvsim_capture.py: per sequence `token_ids` (prompt, then the uncompressed
model's continuation), `prompt_len`, `kind` and `answer`. For a policy and a sequence:

- teacher-forced: the prompt is prefilled (its own attention exact, its cache compressed by
  the policy), then the continuation is fed one token per decode step, each attending over
  the policy's cache. The continuation tokens P+1..T-1 are scored (token P is predicted by
  the prefill, before any compressed cache is read, the same for every policy): NLL, and
  against `full` on the same sequence the KL of the next-token distributions and top-1
  agreement;
- free greedy generation of `max_new_tokens` tokens after the prompt: whether the answer is
  in the text, where the tokens first differ from `full`'s, the fraction equal to `full`'s.
  While the policy's greedy choice equals the fed continuation, the generation is the
  teacher-forced pass itself; a separate pass runs only from a divergence on.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core
from .model import LiveModel, Prefill, _kvcap

__all__ = ["Outcome", "PromptTrace", "Reference", "evaluate", "full_reference", "open_prompts"]

#: How the live mode declares the model's float32 rows to the policies: as the cache's
#: 16-bit storage, kept unchanged by `full` (which is then the model itself) and by the
#: 16-bit windows of KIVI, MiKV and SKVQ (docs/closed-loop.md).
LIVE_DTYPE = "float16"
#: The reference policy's canonical spec.
FULL = "full"


@dataclass
class PromptSequence:
    """One sequence of the prompts trace."""
    index: int
    token_ids: list[int]
    prompt_len: int
    kind: str
    answer: str
    user_prompt: bool  # a researcher's prompt (answer matched whole), not a built-in one


@dataclass
class PromptTrace:
    """What the live mode reads from a capture trace. Made by :func:`open_prompts`."""
    path: str
    meta: dict[str, Any]
    sha256: str
    eos_banned: bool
    sequences: list[PromptSequence] = field(default_factory=list)

    def check_model(self, lm: LiveModel) -> None:
        """Refuses a trace captured from another model (compares the attention shapes)."""
        s, m = lm.shape, self.meta
        mine = {"num_model_layers": s.num_layers, "num_q_heads": s.num_q_heads,
                "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim}
        bad = [f"{k} {m[k]} (model: {v})" for k, v in mine.items() if m[k] != v]
        windows = [s.sliding_window[layer] for layer in m["layer_ids"]
                   if layer < s.num_layers]
        if not bad and windows != list(m["sliding_window"]):
            bad.append(f"sliding_window {m['sliding_window']} (model: {windows})")
        if bad:
            raise _core.ConfigError(
                f"{self.path} was captured from another model ({m['model_name']}) than "
                f"'{lm.name}' ({lm.model_name}): {', '.join(bad)}")


def open_prompts(path: str) -> PromptTrace:
    """Reads the prompts, continuations and answers of a capture trace (schema-checked by
    the C++ reader). Raises kvsim.FormatError when it was not written by kvsim_capture.py."""
    import h5py
    meta = _core.TraceReader(path).meta  # validates the file
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs.get("capture_config", "{}") or "{}")
        source = json.loads(f.attrs.get("prompt_source", "{}") or "{}")
        out = PromptTrace(path, meta, digest.hexdigest(), bool(config.get("eos_banned", True)))
        for i in range(int(f.attrs["num_sequences"])):
            g = f[f"sequences/{i:06d}"]
            if "answer" not in g.attrs or "kind" not in g.attrs:
                raise _core.FormatError(
                    f"{path}: sequence {i} has no 'answer'/'kind' attributes: the live mode "
                    "needs a trace captured by trace/capture/kvsim_capture.py (its prompts, "
                    "continuation and answers)")
            ids = [int(t) for t in g["token_ids"][()]]
            P = int(g.attrs["prompt_len"])
            out.sequences.append(PromptSequence(i, ids, P, _text(g.attrs["kind"]),
                                                _text(g.attrs["answer"]),
                                                source.get("type", "builtin") != "builtin"))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Pass:
    """What one teacher-forced pass produced."""
    first: Any  # logits predicting token P (the prefill's last row)
    logprobs: Any  # [steps, vocab] log-softmax of the decode steps' logits
    bits: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    fp16: list[int] = field(default_factory=list)
    tokens_seen: list[int] = field(default_factory=list)
    greedy: list[int] = field(default_factory=list)  # each decode step's greedy choice
    steps: list[list] | None = None  # each decode step's rows (LiveModel.decode's log)


@dataclass
class Reference:
    """`full` on one sequence: the teacher-forced log-probabilities and greedy tokens."""
    sequence: int
    logprobs: Any
    nll: float
    generated: list[int]
    prefill: Prefill | None = None  # the model's prompt pass, shared with the other policies


@dataclass
class Outcome:
    """One row of the closed-loop table (docs/results-format.md, "Closed-loop results")."""
    run: str
    resolved: str
    model: str
    sequence: int
    kind: str
    prompt_tokens: int
    continuation_tokens: int
    nll: float
    delta_nll: float
    kl_mean: float
    kl_p95: float
    top1_agreement: float
    answer_correct: int
    first_divergence: int
    token_agreement: float
    mean_cache_tokens: float
    memory_bits: float
    bits_per_token: float
    memory_ratio: float
    generated_text: str
    seconds: float


def _greedy(logits: Any, banned: list[int]) -> int:
    import torch
    if banned:
        logits = logits.clone()
        logits[banned] = -math.inf
    return int(torch.argmax(logits))


def _session(lm: LiveModel, trace: PromptTrace, spec: str, seq: PromptSequence,
             max_tokens: int, dtype: str) -> _core.LiveSession:
    return lm.session(spec, seq.index, seq.prompt_len, max_tokens, dtype=dtype,
                      calibration_trace=trace.path)


def _prompt(lm: LiveModel, session: Any, seq: PromptSequence, prefill: Prefill | None):
    """The prompt into `session`: the shared prefill's rows (`prefill`), or, when None, a
    forward pass of the model of its own. Returns the logits predicting token P."""
    if prefill is None:
        return lm.forward(session, seq.token_ids[:seq.prompt_len], lm.new_cache())[-1]
    prefill.feed(session)
    return prefill.logits


def _teacher_pass(lm: LiveModel, session: Any, seq: PromptSequence, prefill: Prefill | None,
                  banned: list[int]) -> _Pass:
    import torch
    tokens, P = seq.token_ids, seq.prompt_len
    with lm.attending():
        first = _prompt(lm, session, seq, prefill)
        out = _Pass(first, None, steps=None if prefill is None else [])
        rows = []
        for t in range(P, len(tokens) - 1):
            log = None if out.steps is None else []
            logits = lm.decode(session, tokens[t], t, log)
            rows.append(torch.log_softmax(logits, dim=-1))
            out.greedy.append(_greedy(logits, banned))
            if log is not None:
                out.steps.append(log)
            bits, kept, fp16 = session.footprint()
            out.bits.append(bits)
            out.kept.append(kept)
            out.fp16.append(fp16)
            out.tokens_seen.append(t + 1)
    out.logprobs = torch.stack(rows) if rows else torch.empty(0, first.shape[-1])
    return out


def _generate(lm: LiveModel, trace: PromptTrace, spec: str, seq: PromptSequence,
              teacher: _Pass, n: int, dtype: str, prefill: Prefill | None,
              banned: list[int]) -> list[int]:
    """Greedy tokens after the prompt: read off the teacher-forced pass while the choices
    equal the fed continuation, then a pass of its own from the divergence on. With the
    shared prefill, that pass's session gets the teacher pass's rows up to the divergence
    (the same policy fed the same tokens) instead of running the model over them again."""
    tokens, P = seq.token_ids, seq.prompt_len
    gen = [_greedy(teacher.first, banned)]
    while len(gen) < n:
        j = len(gen)  # predicted by decode step P + j - 1, which fed tokens[P + j - 1]
        if j - 1 >= len(teacher.greedy) or gen[j - 1] != tokens[P + j - 1]:
            break
        gen.append(teacher.greedy[j - 1])
    if len(gen) == n:
        return gen
    session = _session(lm, trace, spec, seq, P + n, dtype)
    with lm.attending():
        if teacher.steps is None:  # a pass of its own from the prompt on
            gen = [_greedy(_prompt(lm, session, seq, prefill), banned)]
        else:  # gen[:j] are right; the steps that fed gen[:j-1] are the teacher's
            _prompt(lm, session, seq, prefill)
            lm.replay(session, teacher.steps[:len(gen) - 1])
        while len(gen) < n:
            gen.append(_greedy(lm.decode(session, gen[-1], P + len(gen) - 1), banned))
    return gen


def evaluate(lm: LiveModel, trace: PromptTrace | str, spec: str, sequence: int = 0,
             max_new_tokens: int = 32, reference: Reference | None = None,
             dtype: str = LIVE_DTYPE, share_prefill: bool = True) -> Outcome:
    """The closed-loop outcome of `spec` on one sequence of `trace` (docs/closed-loop.md).
    `reference` is `full`'s on the same sequence (computed here when None, which costs a
    second run; :func:`kvsim.live.run` shares it). With `share_prefill`, the model's prompt
    pass is the reference's (computed once per sequence; the outcome is identical to a
    prompt pass of this policy's own, `share_prefill=False`)."""
    if isinstance(trace, str):
        trace = open_prompts(trace)
    if not 0 <= sequence < len(trace.sequences):
        raise _core.ConfigError(f"sequence {sequence} out of range ({trace.path} has "
                                f"{len(trace.sequences)})")
    if max_new_tokens < 1:
        raise _core.ConfigError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    if reference is None and _core.parse_spec(spec)["canonical"] != FULL:
        reference = full_reference(lm, trace, sequence, max_new_tokens, dtype, share_prefill)[1]
    seq = trace.sequences[sequence]
    prefill = None
    if share_prefill:
        prefill = reference.prefill if reference is not None else None
        if prefill is None or prefill.tokens != tuple(seq.token_ids[:seq.prompt_len]):
            prefill = lm.prefill(seq.token_ids[:seq.prompt_len])
    return _evaluate(lm, trace, spec, seq, max_new_tokens, reference, dtype, prefill)[0]


def full_reference(lm: LiveModel, trace: PromptTrace, sequence: int, max_new_tokens: int = 32,
                   dtype: str = LIVE_DTYPE,
                   share_prefill: bool = True) -> tuple[Outcome, Reference]:
    """`full` on one sequence: its own row and the reference the other policies need (with
    `share_prefill`, it carries the model's prompt pass for them)."""
    seq = trace.sequences[sequence]
    start = time.perf_counter()
    prefill = lm.prefill(seq.token_ids[:seq.prompt_len]) if share_prefill else None
    seconds = time.perf_counter() - start
    row, reference = _evaluate(lm, trace, FULL, seq, max_new_tokens, None, dtype, prefill)
    row.seconds += seconds  # the shared prompt pass is counted once, here
    return row, reference


def _evaluate(lm: LiveModel, trace: PromptTrace, spec: str, seq: PromptSequence,
              max_new_tokens: int, reference: Reference | None, dtype: str,
              prefill: Prefill | None) -> tuple[Outcome, Reference]:
    resolved = _core.parse_spec(spec)["canonical"]
    sequence = seq.index
    if len(seq.token_ids) - seq.prompt_len < 2:
        raise _core.ConfigError(f"{trace.path}: sequence {sequence} has fewer than 2 "
                                "continuation tokens: nothing to score")
    start = time.perf_counter()
    T = len(seq.token_ids)
    banned = lm.eos_ids if trace.eos_banned else []
    teacher = _teacher_pass(lm, _session(lm, trace, spec, seq, T, dtype), seq, prefill, banned)
    gen = _generate(lm, trace, spec, seq, teacher, max_new_tokens, dtype, prefill, banned)
    targets = seq.token_ids[seq.prompt_len + 1:]
    lp = teacher.logprobs
    nll = float(-lp[range(len(targets)), targets].double().mean())
    if reference is None:  # this is `full`: its own reference
        reference = Reference(sequence, lp, nll, gen, prefill)
    ref_lp = reference.logprobs
    kl = (ref_lp.exp() * (ref_lp - lp)).sum(-1).double().numpy()
    top1 = float((lp.argmax(-1) == ref_lp.argmax(-1)).double().mean())
    same = [a == b for a, b in zip(gen, reference.generated)]
    text = lm.tokenizer.decode(gen, skip_special_tokens=True)
    capture = _kvcap()[0]
    bits = np.asarray(teacher.bits, dtype=np.float64)
    out = Outcome(
        run=spec, resolved=resolved, model=lm.name, sequence=sequence, kind=seq.kind,
        prompt_tokens=seq.prompt_len, continuation_tokens=len(targets), nll=nll,
        delta_nll=nll - reference.nll, kl_mean=float(kl.mean()),
        kl_p95=float(np.percentile(kl, 95)), top1_agreement=top1,
        answer_correct=capture.answer_found(seq.answer, text, seq.user_prompt),
        first_divergence=same.index(False) if not all(same) else -1,
        token_agreement=float(np.mean(same)),
        mean_cache_tokens=float(np.mean(teacher.kept)) / (lm.shape.num_layers *
                                                          lm.shape.num_kv_heads),
        memory_bits=float(bits.mean()),
        bits_per_token=float((bits / np.asarray(teacher.tokens_seen)).mean()),
        memory_ratio=float((bits / np.asarray(teacher.fp16, dtype=np.float64)).mean()),
        generated_text=text, seconds=time.perf_counter() - start)
    return out, reference
