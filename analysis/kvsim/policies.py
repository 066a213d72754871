"""Policies and specs, from the C++ registry and parser (no second grammar here), and
eviction scorers written in Python (:func:`scorer`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import _core


@dataclass(frozen=True)
class Param:
    """One parameter of a policy, as ``kvsim policies`` prints it."""

    name: str
    type: str                 # "int", "float", "bool", "str", "enum" or "list[int]"
    default: str              # in spec syntax, e.g. "0.5", "once", "[0,1]"
    range: str                # e.g. "int in [1, 8]", "one of once|cap"
    min: float | None = None  # numeric types only
    max: float | None = None
    choices: list[str] = field(default_factory=list)
    help: str = ""


@dataclass(frozen=True)
class Policy:
    """A registered policy: its name, family (``evict``, ``merge``, ``quantize``),
    one-line summary and parameters."""

    name: str
    kind: str
    summary: str
    params: list[Param]

    @property
    def defaults(self) -> dict[str, str]:
        """{parameter: default}, in spec syntax."""
        return {p.name: p.default for p in self.params}


@dataclass(frozen=True)
class StageSpec:
    """One stage of a parsed spec: every parameter resolved (defaults included), and the
    names of those the spec text set (``given``), in the order written."""

    name: str
    kind: str
    params: dict[str, Any]
    given: list[str]
    canonical: str

    @property
    def given_params(self) -> dict[str, Any]:
        """Only the parameters the spec text set, typed."""
        return {k: self.params[k] for k in self.given}


@dataclass(frozen=True)
class Spec:
    """A parsed and validated policy spec (the C++ parser). ``str(spec)`` is canonical."""

    text: str
    canonical: str
    stage_names: str
    stages: list[StageSpec]

    def __str__(self) -> str:
        return self.canonical


def policies() -> list[Policy]:
    """Every registered policy (C++ and Python scorers), sorted by name."""
    return [Policy(name=p["name"], kind=p["kind"], summary=p["summary"],
                   params=[Param(**q) for q in p["params"]])
            for p in _core.policies()]


def parse_spec(text: str) -> Spec:
    """Parse and validate ``text`` (``name:key=val,...+name2:...``) with the C++ parser.

    Raises kvsim.ConfigError with the CLI's message on an unknown policy, key or value, or
    a composition that makes no sense. ``h2o:heavy_tokens=1e+3+kivi`` is two stages: a
    ``+`` separates stages only before a policy name.
    """
    d = _core.parse_spec(text)
    return Spec(text=d["text"], canonical=d["canonical"], stage_names=d["stage_names"],
                stages=[StageSpec(**s) for s in d["stages"]])


Scorer = Callable[[_core.ScoreView], Any]


def scorer(name: str, params: dict[str, Any], *, observe: str = "none",
           prefill_rows: int = 0, decode_attention: bool = False,
           protected_in_budget: bool = True, schedule: str = "cap",
           summary: str = "") -> Callable[[Scorer], Scorer]:
    """Register an eviction scorer written in Python, usable in specs like any policy.

    The decorated function gets a :class:`kvsim.ScoreView` for one (layer, kv head) at one
    selection and returns one score per ``view.candidates`` entry (higher = keep); the C++
    base (policies/scorer.h) keeps the ``view.keep`` best, with the project's tie rule.

    params: the parameters and their defaults; a value's type is its default's. Names the
        base reads: ``budget`` (required: an int is tokens per (layer, kv head), a float a
        fraction of the prompt, ``max(1, ceil(budget*P))``), ``schedule`` ("once" |
        "cap"), ``sinks`` and ``recent`` (protected positions). Others reach the function
        as ``view.params``.
    observe: "none", "sum" (accumulated attention, as H2O) or "latest" (the last
        observation, as TOVA): ``view.attention[position]``, summed over the group.
    prefill_rows: prompt rows observed at prefill (-1 = all) when observing.
    decode_attention: observe the policy's own cache at every decode step.
    protected_in_budget: whether the protected entries count against ``budget``.
    schedule: "cap" (select at every step) or "once" (at prefill only), unless
        ``params`` declares ``schedule``.

    Redefining a scorer of the same name replaces it. The function runs with the GIL on
    the engine's threads, one call at a time; an exception in it stops the replay and is
    raised by :func:`kvsim.replay`.
    """
    def register(fn: Scorer) -> Scorer:
        def trampoline(view: _core.ScoreView) -> np.ndarray:
            scores = np.ascontiguousarray(fn(view), dtype=np.float64)
            n = len(view.candidates)
            if scores.shape != (n,):
                raise ValueError(f"scorer {name!r} returned scores of shape {scores.shape}; "
                                 f"expected ({n},): one per candidate")
            if np.isnan(scores).any():
                raise ValueError(f"scorer {name!r} returned NaN scores")
            return scores

        _core.register_scorer(name, trampoline, dict(params), summary=summary or
                              (fn.__doc__ or "").strip().split("\n")[0], observe=observe,
                              prefill_rows=prefill_rows, decode_attention=decode_attention,
                              protected_in_budget=protected_in_budget, schedule=schedule)
        return fn
    return register
