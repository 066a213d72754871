"""The researcher's own prompts for a capture (docs/capture.md, "Your own prompts").

    read_prompt_file(path)  a JSONL file ({"prompt": ..., "answer": ..., "continuation": ...}
                            per line) or a text file (one prompt per blank-line-separated
                            block)
    read_dataset(...)       a split of a Hugging Face `datasets` dataset (optional package):
                            a directory written by `save_to_disk`, or a dataset name
    encode_prompt(...)      a prompt's token ids (verbatim, or in the chat template)

Each returns the prompts and a `source` dict, which the capture writes into the trace as
the JSON root attribute `prompt_source` (docs/trace-format.md): for a file its absolute
path and sha256, for a dataset its name, split, revision and fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from .models import CaptureError

JSONL_KEYS = ("prompt", "answer", "continuation", "id")


@dataclass
class UserPrompt:
    """One prompt of the researcher's: its text, the reference answer ("" when none) and
    a reference continuation ("" when none; its tokens become the decode steps)."""
    text: str
    answer: str = ""
    continuation: str = ""
    index: int = 0      # position in the source (line of a JSONL file, block, row)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _optional_text(value, where: str, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CaptureError(f"{where}: \"{key}\" must be a string, not {type(value).__name__}")
    return value


def _read_jsonl(path: str, text: str) -> list[UserPrompt]:
    prompts = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CaptureError(f"{where}: not a JSON object ({e.msg})") from e
        if not isinstance(record, dict):
            raise CaptureError(f"{where}: a line must be a JSON object, not {type(record).__name__}")
        unknown = sorted(set(record) - set(JSONL_KEYS))
        if unknown:
            raise CaptureError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                               f"the keys are {', '.join(JSONL_KEYS)}")
        prompt = _optional_text(record.get("prompt"), where, "prompt")
        if not prompt.strip():
            raise CaptureError(f"{where}: \"prompt\" is missing or empty")
        prompts.append(UserPrompt(prompt, _optional_text(record.get("answer"), where, "answer"),
                                  _optional_text(record.get("continuation"), where,
                                                 "continuation"), n))
    return prompts


def _read_text(text: str) -> list[UserPrompt]:
    """One prompt per block of lines separated by blank lines; each block stripped of
    its leading and trailing whitespace, its inner line breaks kept."""
    prompts, block, start = [], [], 0
    for n, line in enumerate(text.split("\n") + [""], start=1):
        if line.strip():
            if not block:
                start = n
            block.append(line)
        elif block:
            prompts.append(UserPrompt("\n".join(block).strip(), index=start))
            block = []
    return prompts


def read_prompt_file(path: str) -> tuple[list[UserPrompt], dict]:
    """The prompts of a JSONL file (name ending in .jsonl) or of a text file (any other
    name), and their source. Raises CaptureError for a missing, empty or malformed file."""
    if not os.path.isfile(path):
        raise CaptureError(f"--prompt-file {path}: no such file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CaptureError(f"--prompt-file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    fmt = "jsonl" if path.lower().endswith(".jsonl") else "text"
    prompts = _read_jsonl(path, text) if fmt == "jsonl" else _read_text(text)
    if not prompts:
        raise CaptureError(f"--prompt-file {path}: no prompt in the file")
    source = {"type": "file", "path": os.path.abspath(path), "sha256": _sha256(path),
              "format": fmt, "prompts": len(prompts)}
    return prompts, source


def read_dataset(name: str, split: str, revision: str | None, prompt_field: str,
                 answer_field: str | None, continuation_field: str | None,
                 limit: int | None) -> tuple[list[UserPrompt], dict]:
    """The prompts of a split of a Hugging Face dataset: a directory written by
    `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or a name for `load_dataset`
    (which may download it). answer_field and continuation_field are used when the
    dataset has those columns. Raises CaptureError when `datasets` is not installed."""
    try:
        import datasets
    except ImportError as e:
        raise CaptureError("--dataset needs the Hugging Face 'datasets' package, an optional "
                           "dependency that is not installed (pip install datasets)") from e
    local = os.path.isdir(name)
    try:
        if local:
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise CaptureError(f"--dataset {name}: no split {split!r}; it has "
                                       f"{', '.join(loaded)}")
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(name, split=split, revision=revision)
    except CaptureError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise CaptureError(f"--dataset {name}: cannot load split {split!r}: {e}") from e
    columns = list(loaded.column_names)
    if prompt_field not in columns:
        raise CaptureError(f"--dataset {name}: no column {prompt_field!r} (--prompt-field); "
                           f"it has {', '.join(columns)}")
    rows = len(loaded) if limit is None else min(limit, len(loaded))
    prompts = []
    for i in range(rows):
        row = loaded[i]
        where = f"--dataset {name} row {i}"
        text = _optional_text(row[prompt_field], where, prompt_field)
        if not text.strip():
            raise CaptureError(f"{where}: column {prompt_field!r} is empty")
        answer = (_optional_text(row[answer_field], where, answer_field)
                  if answer_field and answer_field in columns else "")
        cont = (_optional_text(row[continuation_field], where, continuation_field)
                if continuation_field and continuation_field in columns else "")
        prompts.append(UserPrompt(text, answer, cont, i))
    if not prompts:
        raise CaptureError(f"--dataset {name}: split {split!r} has no rows")
    source = {"type": "dataset", "name": os.path.abspath(name) if local else name,
              "local": local, "split": split, "revision": revision or "",
              "fingerprint": str(getattr(loaded, "_fingerprint", "") or ""),
              "num_rows": len(loaded), "prompts": len(prompts),
              "fields": {"prompt": prompt_field,
                         "answer": answer_field if answer_field in columns else None,
                         "continuation": (continuation_field if continuation_field in columns
                                          else None)},
              "datasets_version": getattr(datasets, "__version__", "")}
    return prompts, source


def encode_prompt(tok, text: str, chat: bool) -> list[int]:
    """Token ids of a prompt: the text verbatim (with the tokenizer's special tokens, e.g.
    BOS), or wrapped in the tokenizer's chat template as a user message."""
    if not chat:
        return list(tok.encode(text, add_special_tokens=True))
    if not getattr(tok, "chat_template", None):
        raise CaptureError("--chat on: the tokenizer has no chat template")
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
    ids = list(tok.encode(rendered, add_special_tokens=False))
    bos = getattr(tok, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = list(tok.encode(rendered, add_special_tokens=True))
    return ids
