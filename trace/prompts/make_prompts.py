#!/usr/bin/env python3
"""Deterministic long-context prompts for trace capture, made here (nothing downloaded).

Four kinds, each sized with the model's tokenizer to (at most, and as close as a word
allows) a target number of tokens:

- passkey:      a number hidden in repetitive filler text, asked for at the end;
- needle:       one "special magic number" sentence (the needle) placed at a chosen depth
                in essay-like text (the haystack), asked for at the end;
- multidoc:     several short invented documents (QA style); the question needs one of them;
- continuation: plain prose that stops mid-paragraph, for the model to continue.

Everything comes from `random.Random(seed)`: the same seed, kind, target and tokenizer
give the same prompt. Usable without a model: pass any `count_tokens(text) -> int`.

    import make_prompts as mp
    p = mp.make_prompt("passkey", tokenizer, 512, seed=0)
    p.input_ids, p.text, p.answer

    python3 trace/prompts/make_prompts.py --kind needle --tokens 300 --seed 1   # prints it
    (the command line counts words, as no tokenizer is loaded)
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from typing import Callable

KINDS = ("passkey", "needle", "multidoc", "continuation")

# --- vocabulary for generated text -------------------------------------------------------

_SUBJECTS = ["the old miller", "a young engineer", "the harbour master", "my neighbour", "the council",
             "a travelling painter", "the librarian", "the night nurse", "a quiet student", "the baker",
             "the ferry captain", "an archivist", "the mayor", "a shepherd", "the new teacher",
             "the clockmaker", "a retired sailor", "the gardener", "the river pilot", "a tired courier"]
_VERBS = ["repaired", "described", "carried", "painted", "measured", "forgot", "studied", "counted",
          "sold", "cleaned", "planted", "borrowed", "inspected", "mapped", "remembered", "rebuilt",
          "photographed", "catalogued", "delivered", "sketched"]
_OBJECTS = ["the narrow bridge", "a box of letters", "the east wall", "three copper kettles",
            "the winter garden", "an unfinished map", "the signal lamp", "a crate of apples",
            "the station clock", "the village records", "a broken violin", "the long table",
            "the lighthouse stairs", "a jar of honey", "the orchard fence", "the ledger of debts",
            "a wooden boat", "the school roof", "a bundle of maps", "the chapel bell"]
_PLACES = ["near the harbour", "before dawn", "after the storm", "in the market square",
           "behind the mill", "on the hill road", "during the festival", "by the canal",
           "under the old oak", "at the edge of town", "in the cold cellar", "beside the station",
           "through the long afternoon", "across the valley", "inside the workshop"]
_CONNECT = ["Later", "Meanwhile", "Afterwards", "Even so", "In the evening", "By then", "At first",
            "For a while", "Soon", "Once again", "Eventually", "That spring"]
_ADJ = ["quiet", "patient", "careful", "restless", "cheerful", "stubborn", "curious", "gentle",
        "weary", "bright", "clumsy", "proud"]
_FEEL = ["hoped the weather would hold", "thought about the distant city", "hummed an old song",
         "wondered who had left it there", "kept a careful record of everything",
         "laughed at the small mistake", "promised to return the next day", "said nothing at all",
         "wrote a short note in the margin", "watched the boats come in"]
_SYL = ["ar", "bel", "cor", "dan", "el", "fen", "gar", "hol", "is", "jor", "kel", "lin", "mor",
        "nor", "os", "pel", "quin", "ros", "sal", "tam", "ul", "ven", "wen", "yor", "zan"]
_TOPICS = ["river", "bridge", "festival", "library", "mine", "orchard", "observatory", "harbour",
           "railway", "guild", "monastery", "market"]
_CITIES = ["Lisbon", "Kyoto", "Nairobi", "Oslo", "Lima", "Hanoi", "Tunis", "Quebec", "Perth",
           "Tbilisi", "Bergen", "Cusco", "Dakar", "Porto", "Riga", "Sapporo"]
_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
           "There and back again.")


@dataclass
class Prompt:
    kind: str
    seed: int
    text: str                      # the prompt as the model sees it (chat template applied if used)
    input_ids: list[int] = field(default_factory=list)
    answer: str = ""               # expected answer for retrieval kinds, "" for continuation
    meta: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}"
    r = rng.random()
    if r < 0.3:
        s = f"{rng.choice(_CONNECT)}, {s}"
    elif r < 0.55:
        s = f"{s}, and {rng.choice(['he', 'she', 'they'])} {rng.choice(_FEEL)}"
    elif r < 0.7:
        s = f"{s} because the {rng.choice(_ADJ)} {rng.choice(['neighbours', 'children', 'workers', 'visitors'])} asked"
    return s[0].upper() + s[1:] + "."


def prose_words(rng: random.Random, n_words: int) -> list[str]:
    """About n_words words of generated prose, split into words (paragraphs marked by '\\n\\n')."""
    words: list[str] = []
    in_par = 0
    while len(words) < n_words:
        sent = _sentence(rng).split(" ")
        in_par += 1
        if in_par >= rng.randint(4, 7):
            sent[-1] += "\n\n"
            in_par = 0
        words.extend(sent)
    return words


def _join(words: list[str]) -> str:
    out = " ".join(words)
    return out.replace("\n\n ", "\n\n").strip()


# --- token counting and fitting ----------------------------------------------------------

def _counter(tokenizer) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda s: len(s.split())
    if callable(tokenizer) and not hasattr(tokenizer, "encode"):
        return tokenizer
    return lambda s: len(tokenizer.encode(s, add_special_tokens=True))


def _render(tokenizer, user_text: str, chat: bool, assistant_prefix: str = "") -> str:
    if not chat:
        return user_text + assistant_prefix
    msgs = [{"role": "user", "content": user_text}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def _fit(build: Callable[[int], tuple[str, dict]], count: Callable[[str], int], target: int,
         max_units: int) -> tuple[str, dict, int]:
    """Largest n in [0, max_units] with count(build(n)) <= target (binary search; counts
    grow with n). Returns (text, info, tokens)."""
    lo, hi = 0, max_units
    best = None
    text0, info0 = build(0)
    n0 = count(text0)
    if n0 > target:
        raise ValueError(f"target of {target} tokens is below the {n0} tokens the prompt needs without filler")
    best = (text0, info0, n0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text, info = build(mid)
        n = count(text)
        if n <= target:
            lo, best = mid, (text, info, n)
        else:
            hi = mid - 1
    return best


def _uses_chat(tokenizer, chat) -> bool:
    if chat is None or chat == "auto":
        return bool(tokenizer is not None and getattr(tokenizer, "chat_template", None))
    return bool(chat)


# --- the four kinds ----------------------------------------------------------------------

def _passkey(rng, tokenizer, chat):
    key = str(rng.randint(10000, 99999))
    depth = rng.uniform(0.2, 0.8)
    intro = ("There is an important piece of information hidden inside a lot of irrelevant text. "
             "Find it and remember it; you will be asked about it.\n\n")
    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    question = "\n\nWhat is the pass key? Answer with the number only."
    prefix = "\nThe pass key is" if not chat else ""

    def build(n):
        reps = [_FILLER] * n
        cut = int(round(depth * n))
        body = " ".join(reps[:cut]) + needle + " ".join(reps[cut:])
        return _render(tokenizer, intro + body.strip() + question, chat, prefix if not chat else ""), \
            {"filler_units": n, "depth": depth}
    return build, key, {"needle": needle.strip(), "depth": round(depth, 3)}


def _needle(rng, tokenizer, chat, max_words):
    city = rng.choice(_CITIES)
    number = str(rng.randint(1000000, 9999999))
    depth = rng.uniform(0.1, 0.9)
    words = prose_words(rng, max_words)
    needle = f"The special magic number for {city} is: {number}."
    question = (f"\n\nWhat is the special magic number for {city} mentioned in the text above? "
                "Answer with the number only.")
    prefix = f"\nThe special magic number for {city} is:"

    def build(n):
        ws = words[:n]
        cut = int(round(depth * n))
        body = _join(ws[:cut] + [needle] + ws[cut:])
        return _render(tokenizer, "Read the following text carefully.\n\n" + body + question, chat,
                       "" if chat else prefix), {"filler_words": n}
    return build, number, {"needle": needle, "depth": round(depth, 3), "city": city}


def _documents(rng, count):
    docs = []
    for i in range(count):
        place = _name(rng, 2)
        topic = rng.choice(_TOPICS)
        founder = f"{_name(rng, 2)} {_name(rng, 3)}"
        year = rng.randint(1520, 1990)
        fact = f"The {topic} of {place} was founded in {year} by {founder}."
        sents = [fact] + [_sentence(rng) for _ in range(rng.randint(3, 6))]
        rng.shuffle(sents)
        docs.append({"title": f"The {topic} of {place}", "place": place, "topic": topic,
                     "founder": founder, "year": year, "sents": sents})
    return docs


def _multidoc(rng, tokenizer, chat, max_sents):
    gold = _documents(rng, 1)[0]
    distract = _documents(rng, max(1, max_sents // 3))
    pos = rng.random()  # relative position of the gold document among the documents
    question = f"\n\nQuestion: Who founded the {gold['topic']} of {gold['place']}, and in which year?\nAnswer:"
    total = sum(len(d["sents"]) for d in distract)

    def build(n):
        used, left = [], n
        for d in distract:
            if left <= 0:
                break
            used.append((d, d["sents"][:left]))
            left -= len(d["sents"])
        at = int(round(pos * len(used)))
        used.insert(at, (gold, gold["sents"]))
        parts = [f"Document [{j + 1}] (Title: {d['title']}) {' '.join(ss)}" for j, (d, ss) in enumerate(used)]
        body = "Answer the question using the documents below.\n\n" + "\n\n".join(parts) + question
        return _render(tokenizer, body, chat, ""), {"documents": len(used), "gold_index": at}
    return build, f"{gold['founder']}, {gold['year']}", {"gold_title": gold["title"], "max_units": total}


def _continuation(rng, tokenizer, chat, max_words):
    title = f"{_name(rng, 2)} {rng.choice(['Harbour', 'Valley', 'Crossing', 'Mill', 'Station'])}"
    words = prose_words(rng, max_words)

    def build(n):
        ws = words[:n]
        text = f"{title}\n\n" + _join(ws)
        if text.endswith("."):
            text = text[:-1] + ","  # stop mid-sentence so the model continues it
        return text, {"words": n}
    return build, "", {"title": title}


def make_prompt(kind: str, tokenizer=None, target_tokens: int = 512, seed: int = 0, chat="auto") -> Prompt:
    """One prompt of `kind` with at most `target_tokens` tokens (as close as one filler unit allows).

    tokenizer: a transformers tokenizer (its `encode` counts tokens, special tokens included,
    and its chat template is used for the question kinds when chat is "auto"/True and the
    tokenizer has one), or a callable text -> token count, or None (words are counted).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; one of {', '.join(KINDS)}")
    rng = random.Random(f"{kind}:{seed}")
    count = _counter(tokenizer)
    has_tok = tokenizer is not None and hasattr(tokenizer, "encode")
    use_chat = _uses_chat(tokenizer, chat) and has_tok and kind != "continuation"
    # generous upper bounds for the search (a filler unit is >= 1 token)
    if kind == "passkey":
        build, answer, meta = _passkey(rng, tokenizer, use_chat)
        max_units = max(1, target_tokens // 4)
    elif kind == "needle":
        build, answer, meta = _needle(rng, tokenizer, use_chat, target_tokens + 16)
        max_units = target_tokens + 16
    elif kind == "multidoc":
        build, answer, meta = _multidoc(rng, tokenizer, use_chat, target_tokens // 4 + 8)
        max_units = meta.pop("max_units")
    else:
        build, answer, meta = _continuation(rng, tokenizer, use_chat, target_tokens + 16)
        max_units = target_tokens + 16
    text, info, n = _fit(build, count, target_tokens, max_units)
    meta = {**meta, **info, "chat_template": use_chat, "target_tokens": target_tokens}
    ids = list(tokenizer.encode(text, add_special_tokens=True)) if has_tok else []
    if use_chat and has_tok:
        # the chat template usually writes the BOS itself; do not add a second one
        ids_ns = list(tokenizer.encode(text, add_special_tokens=False))
        bos = getattr(tokenizer, "bos_token_id", None)
        if ids_ns and bos is not None and ids_ns[0] == bos:
            ids = ids_ns
    return Prompt(kind=kind, seed=seed, text=text, input_ids=ids, answer=answer, meta=meta)


def make_prompts(kinds, tokenizer=None, target_tokens: int = 512, seed: int = 0, chat="auto") -> list[Prompt]:
    """One prompt per kind (kinds: list or comma-separated string), all from the same seed."""
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    return [make_prompt(k, tokenizer, target_tokens, seed, chat) for k in kinds]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Print a generated prompt (sized in words here).")
    ap.add_argument("--kind", choices=KINDS, default="passkey")
    ap.add_argument("--tokens", type=int, default=200, help="target size (words, without a tokenizer)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    p = make_prompt(a.kind, None, a.tokens, a.seed)
    print(p.text)
    print(f"\n--- kind={p.kind} seed={p.seed} answer={p.answer!r} meta={p.meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
