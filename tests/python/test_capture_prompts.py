"""The researcher's own prompts for a capture (trace/capture/kvcap/prompt_sources.py,
docs/capture.md "Your own prompts"): JSONL and text files, a Hugging Face dataset split
(when `datasets` is installed), and the command line's errors before any model loads.
The capture from a prompt file with a real model is in test_capture.py."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTURE_DIR = os.path.join(REPO, "trace", "capture")
if CAPTURE_DIR not in sys.path:
    sys.path.insert(0, CAPTURE_DIR)

from kvcap.models import CaptureError  # noqa: E402
from kvcap.prompt_sources import read_dataset, read_prompt_file  # noqa: E402

SCRIPT = os.path.join(CAPTURE_DIR, "kvsim_capture.py")
HAVE_DATASETS = importlib.util.find_spec("datasets") is not None


def test_jsonl_file(tmp_path):
    path = tmp_path / "p.jsonl"
    records = [{"prompt": "Where is the key?\nIt is under the mat.", "answer": "under the mat"},
               {"prompt": "Once upon a time", "continuation": " there was a king", "id": "x7"}]
    path.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n",
                    encoding="utf-8")
    prompts, source = read_prompt_file(str(path))
    assert [p.text for p in prompts] == [r["prompt"] for r in records]
    assert [p.answer for p in prompts] == ["under the mat", ""]
    assert [p.continuation for p in prompts] == ["", " there was a king"]
    assert [p.index for p in prompts] == [1, 3]  # file lines
    assert source == {"type": "file", "path": str(path), "format": "jsonl", "prompts": 2,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_text_file_one_prompt_per_blank_line_separated_block(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("\n  first prompt,\n  on two lines  \n\n\n\nsecond\n   \nthird\n",
                    encoding="utf-8")
    prompts, source = read_prompt_file(str(path))
    assert [p.text for p in prompts] == ["first prompt,\n  on two lines", "second", "third"]
    assert [p.index for p in prompts] == [2, 7, 9]
    assert source["format"] == "text" and source["prompts"] == 3
    # The hash is the file's: changing one byte changes it.
    path.write_text(path.read_text(encoding="utf-8").replace("third", "Third"), encoding="utf-8")
    assert read_prompt_file(str(path))[1]["sha256"] != source["sha256"]


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a"}\n{"prompt": "b", "anwser": "c"}\n', r"p\.jsonl:2: unknown key\(s\) anwser"),
    ('{"prompt": "a"}\nnot json\n', r"p\.jsonl:2: not a JSON object"),
    ('{"answer": "a"}\n', r"p\.jsonl:1: \"prompt\" is missing or empty"),
    ('["a"]\n', r"p\.jsonl:1: a line must be a JSON object"),
    ('{"prompt": "a", "answer": 3}\n', r"p\.jsonl:1: \"answer\" must be a string"),
    ("\n\n", r"no prompt in the file"),
])
def test_bad_jsonl_is_refused_with_its_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CaptureError, match=message):
        read_prompt_file(str(path))


def test_missing_and_binary_files_are_refused(tmp_path):
    with pytest.raises(CaptureError, match="no such file"):
        read_prompt_file(str(tmp_path / "none.txt"))
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CaptureError, match="not UTF-8"):
        read_prompt_file(str(tmp_path / "b.txt"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_refuses_bad_prompt_options_before_loading_a_model(tmp_path):
    out = str(tmp_path / "x.h5")
    good = tmp_path / "p.txt"
    good.write_text("a prompt\n", encoding="utf-8")
    # "no-such-model" would be refused at load time: these fail before it.
    r = _cli("--model", "no-such-model", "--prompt-file", str(tmp_path / "none.jsonl"), "--out", out)
    assert r.returncode == 2 and "--prompt-file" in r.stderr and "no such file" in r.stderr
    r = _cli("--model", "no-such-model", "--prompt-file", str(good), "--prompts", "passkey",
             "--out", out)
    assert r.returncode == 2 and "leave it out" in r.stderr
    r = _cli("--model", "no-such-model", "--prompt-file", str(good), "--dataset", "d",
             "--out", out)
    assert r.returncode == 2 and "give one of them" in r.stderr
    assert not list(tmp_path.glob("x.h5*"))


@pytest.mark.skipif(HAVE_DATASETS, reason="'datasets' is installed: the error for its absence "
                                          "cannot show")
def test_dataset_without_the_package_is_a_clear_error(tmp_path):
    with pytest.raises(CaptureError, match="needs the Hugging Face 'datasets' package"):
        read_dataset(str(tmp_path), "train", None, "prompt", "answer", "continuation", None)
    r = _cli("--model", "smollm2", "--dataset", str(tmp_path), "--out", str(tmp_path / "x.h5"))
    assert r.returncode == 2 and "pip install datasets" in r.stderr


@pytest.mark.skipif(not HAVE_DATASETS, reason="the optional 'datasets' package is not installed "
                                              "(pip install datasets)")
def test_dataset_split_from_disk(tmp_path):
    import datasets
    train = datasets.Dataset.from_dict({"question": ["What is 2+2?", "Name a colour."],
                                        "answer": ["4", "red"]})
    test = datasets.Dataset.from_dict({"question": ["Spell cat."], "answer": ["c-a-t"]})
    where = tmp_path / "ds"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(where))
    prompts, source = read_dataset(str(where), "test", None, "question", "answer",
                                   "continuation", None)
    assert [(p.text, p.answer, p.continuation) for p in prompts] == [("Spell cat.", "c-a-t", "")]
    assert source["type"] == "dataset" and source["name"] == str(where)
    assert source["split"] == "test" and source["num_rows"] == 1 and source["fingerprint"]
    assert source["fields"] == {"prompt": "question", "answer": "answer", "continuation": None}
    first, _ = read_dataset(str(where), "train", None, "question", None, None, 1)
    assert [p.text for p in first] == ["What is 2+2?"] and first[0].answer == ""
    with pytest.raises(CaptureError, match="no split 'dev'; it has train, test"):
        read_dataset(str(where), "dev", None, "question", None, None, None)
    with pytest.raises(CaptureError, match="no column 'prompt'"):
        read_dataset(str(where), "train", None, "prompt", None, None, None)
