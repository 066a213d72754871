"""How the report's figures tell runs apart when there are many of them.

A run's spec is a composition of stages, `evict*+merge?+quantize` (docs/policies.md),
e.g. `h2o:heavy=0.125,recent=0.125+kivi:bits=2,residual=32`. From the specs of a
results file:

    method      the stage names, "h2o+kivi": the runs of one method differ only in
                parameter values (a swept method is one curve over its grid)
    family      the first stage's name, "h2o": a colour per family
    composition what follows the first stage, "+kivi" ("alone" when nothing does):
                a marker per composition
    label       the method and the parameters that differ between the method's runs
                ("skvq v_bits=1.5"), never a truncated spec: two runs never share one

    parse_spec(spec) -> [(stage name, {param: value})]
    run_styles(table) -> {run: RunStyle}   colour, marker, label, method, family, ...
    method_runs(styles) -> {method: [runs]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import matplotlib
import pandas as pd

ALONE = "alone"
# Markers of the compositions, in order of first use; "alone" is always the circle.
COMPOSITION_MARKERS = ["s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d"]
FULL_COLOR = (0.25, 0.25, 0.25, 1.0)   # the fp16 reference is drawn in dark grey

_NAME = re.compile(r"[A-Za-z0-9_.-]*")


def _split_top(text: str, sep: str) -> list[str]:
    """text split on sep outside brackets ([..] and (..)), e.g. skip=[0,1]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_spec(spec: str) -> list[tuple[str, dict[str, str]]]:
    """The stages of a policy spec as (name, {param: value}), in spec order.

    Tolerant: "name:k=v,..." (kvsim's form) and "name(k=v,...)" both parse; a
    parameter without "=" is kept with an empty value; an empty spec gives []."""
    stages = []
    for part in _split_top(str(spec).strip(), "+"):
        part = part.strip()
        if not part:
            continue
        name = _NAME.match(part).group(0) or part
        rest = part[len(name):].strip()
        if rest.startswith(":"):
            rest = rest[1:]
        elif rest.startswith("(") and rest.endswith(")"):
            rest = rest[1:-1]
        params: dict[str, str] = {}
        for item in _split_top(rest, ","):
            item = item.strip()
            if item:
                key, _, value = item.partition("=")
                params[key.strip()] = value.strip()
        stages.append((name, params))
    return stages


@dataclass(frozen=True)
class RunStyle:
    """How one run is drawn: colour (its family's), marker (its composition's), and a
    label unique among the runs of the table."""

    run: int
    method: str        # stage names joined by "+"
    family: str        # first stage name
    composition: str   # "alone" or "+name+..." (the stages after the first)
    color: Any
    marker: str
    label: str


def _family_colors(families: list[str]) -> dict[str, Any]:
    """A colour per family ("full" dark grey): tab10 up to 10, tab20 up to 20, then a
    cycle through tab20 (families beyond 20 share colours, their markers differ)."""
    others = [f for f in families if f != "full"]
    cmap = matplotlib.colormaps["tab10" if len(others) <= 10 else "tab20"]
    colors = {f: cmap(i % cmap.N) for i, f in enumerate(others)}
    if "full" in families:
        colors["full"] = FULL_COLOR
    return colors


def _differing(stages_of: dict[int, list[tuple[str, dict[str, str]]]]) -> dict[int, str]:
    """For runs of one method: "k=v,..." of the parameters whose values differ between
    the runs (stage-qualified, "kivi.bits", where two stages share a parameter name)."""
    runs = list(stages_of)
    n_stages = len(next(iter(stages_of.values())))
    keys: list[tuple[int, str]] = []
    for s in range(n_stages):
        for r in runs:
            for k in stages_of[r][s][1]:
                if (s, k) not in keys:
                    keys.append((s, k))
    varying = [(s, k) for s, k in keys
               if len({stages_of[r][s][1].get(k) for r in runs}) > 1]
    names_of_key: dict[str, set[int]] = {}
    for s, k in varying:
        names_of_key.setdefault(k, set()).add(s)
    out = {}
    for r in runs:
        items = []
        for s, k in varying:
            value = stages_of[r][s][1].get(k, "-")
            qualified = (f"{stages_of[r][s][0]}.{k}" if len(names_of_key[k]) > 1 else k)
            items.append(f"{qualified}={value}" if value != "" else qualified)
        out[r] = ",".join(items)
    return out


def run_styles(table: pd.DataFrame) -> dict[int, RunStyle]:
    """A RunStyle per run of a summary table (columns run, spec, and resolved when
    present: the canonical spec with every parameter, used to find what differs)."""
    runs = [int(r) for r in table["run"]]
    specs = {r: str(s) for r, s in zip(runs, table["spec"])}
    resolved = ({r: str(s) for r, s in zip(runs, table["resolved"])}
                if "resolved" in table.columns else {})
    stages: dict[int, list[tuple[str, dict[str, str]]]] = {}
    for r in runs:
        written = parse_spec(specs[r])
        full = parse_spec(resolved.get(r, ""))
        same_names = [n for n, _ in full] == [n for n, _ in written]
        stages[r] = full if full and same_names else written
        if not stages[r]:
            stages[r] = [(specs[r] or f"run {r}", {})]

    method = {r: "+".join(n for n, _ in stages[r]) for r in runs}
    family = {r: stages[r][0][0] for r in runs}
    composition = {r: ("+" + "+".join(n for n, _ in stages[r][1:])) if len(stages[r]) > 1
                   else ALONE for r in runs}
    families = sorted(set(family.values()), key=lambda f: (f != "full", f))
    colors = _family_colors(families)
    comps = sorted({c for c in composition.values() if c != ALONE})
    markers = {ALONE: "o"}
    markers.update({c: COMPOSITION_MARKERS[i % len(COMPOSITION_MARKERS)]
                    for i, c in enumerate(comps)})

    by_method: dict[str, list[int]] = {}
    for r in runs:
        by_method.setdefault(method[r], []).append(r)
    labels: dict[int, str] = {}
    for m, members in by_method.items():
        if len(members) == 1:
            labels[members[0]] = " ".join(specs[members[0]].split()) or m
            continue
        diff = _differing({r: stages[r] for r in members})
        for r in members:
            labels[r] = f"{m} {diff[r]}" if diff[r] else m
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    labels = {r: (f"{l} [run {r}]" if counts[l] > 1 else l) for r, l in labels.items()}
    return {r: RunStyle(r, method[r], family[r], composition[r], colors[family[r]],
                        markers[composition[r]], labels[r]) for r in runs}


def text_color(color: Any) -> tuple[float, float, float, float]:
    """A family colour darkened for text on white (tab20's light shades are faint)."""
    r, g, b, a = matplotlib.colors.to_rgba(color)
    return (0.6 * r, 0.6 * g, 0.6 * b, a)


def method_runs(styles: dict[int, RunStyle]) -> dict[str, list[int]]:
    """{method: its runs}, methods and runs in the order of styles."""
    out: dict[str, list[int]] = {}
    for r, s in styles.items():
        out.setdefault(s.method, []).append(r)
    return out


def family_runs(styles: dict[int, RunStyle]) -> dict[str, list[int]]:
    """{family: its runs}, families and runs in the order of styles."""
    out: dict[str, list[int]] = {}
    for r, s in styles.items():
        out.setdefault(s.family, []).append(r)
    return out


def style_handles(styles: dict[int, RunStyle], runs: list[int] | None = None,
                  with_lines: bool = False) -> list[Any]:
    """Legend handles for the runs (all when None): a "method family (runs)" section, one
    entry per family in its colour, then, when the runs have more than one composition,
    a "composition (marker)" section. Section titles are handles without a symbol."""
    from matplotlib.lines import Line2D
    chosen = [styles[r] for r in (runs if runs is not None else list(styles))]
    handles: list[Any] = [Line2D([], [], ls="none", label="method family (runs):")]
    counts: dict[str, int] = {}
    for s in chosen:
        counts[s.family] = counts.get(s.family, 0) + 1
    colors = {s.family: s.color for s in chosen}
    for family, n in counts.items():
        handles.append(Line2D([], [], ls="-" if with_lines else "none", lw=1.3, marker="o",
                              color=colors[family], markeredgecolor="black",
                              markeredgewidth=0.4, label=f"{family} ({n})"))
    markers = {s.composition: s.marker for s in chosen}
    if len(markers) > 1:
        handles.append(Line2D([], [], ls="none", label="composition (marker):"))
        for comp in sorted(markers, key=lambda c: (c != ALONE, c)):
            handles.append(Line2D([], [], ls="none", marker=markers[comp], color="tab:gray",
                                  markeredgecolor="black", markeredgewidth=0.4,
                                  label=comp if comp == ALONE else f"{comp} (composed)"))
    return handles
