"""Command line of trace/capture/kvsim_capture.py (see docs/capture.md)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from .models import KNOWN, CaptureError, default_cache_dir

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))        # trace/capture
PROMPTS_DIR = os.path.join(os.path.dirname(HERE), "prompts")                # trace/prompts

# Layers of the embedded default trace (SmolLM2-135M has 30 layers): layer 0 (the
# shallow layer that behaves least like the rest), and two adjacent pairs in the deep
# half, where MiniCache-style policies merge layer l with l+1: (15, 16) at the middle
# and (28, 29) at the end. 5 layers x 3 sequences x ~250 tokens in float16 with
# shuffle+deflate is ~6 MB (see docs/capture.md for the arithmetic).
EMBEDDED_LAYERS = [0, 15, 16, 28, 29]

PRESETS = {
    "default-embedded": {
        "model": "smollm2", "prompts": "passkey,continuation,needle", "prompt_tokens": 184,
        "new_tokens": 64, "dtype": "float16", "gzip": 9, "layers": ",".join(map(str, EMBEDDED_LAYERS)),
        "seed": 0, "sample": False, "repeats": 1,
    },
    "large": {
        "model": "smollm2,gemma3-270m", "prompts": "passkey,needle,multidoc,continuation",
        "prompt_tokens": 2048, "new_tokens": 128, "dtype": "float16", "gzip": 4, "layers": "all",
        "seed": 0, "sample": False, "repeats": 1,
    },
}

DEFAULTS = {"model": None, "prompts": "passkey,needle,multidoc,continuation", "prompt_tokens": 512,
            "new_tokens": 64, "dtype": "float16", "gzip": 0, "layers": "all", "seed": 0,
            "sample": False, "repeats": 1}


def _layer_parts(spec: str) -> list[tuple[int, int]]:
    """The (first, last) index pairs of a --layers list (negative = from the end), checked
    for syntax without the model: integers, and ranges in ascending order where both ends
    count from the same side."""
    parts = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                first, last = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                a, b = int(first), int(last)
            else:
                a = b = int(part)
        except ValueError:
            raise CaptureError(f"--layers {spec!r}: '{part}' is not an index or a range a-b "
                               "(e.g. 0,1,14-17,-2,-1)") from None
        if (a < 0) == (b < 0) and b < a:
            raise CaptureError(f"--layers {spec!r}: range '{part}' is empty (write it low-high)")
        parts.append((a, b))
    return parts


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all', or comma-separated indices and ranges ('0,1,14-17,-1' ; negative = from the end)."""
    spec = spec.strip().lower()
    if spec in ("all", "", "*"):
        return list(range(n_layers))
    out = set()
    for a, b in _layer_parts(spec):
        a, b = (a + n_layers if a < 0 else a), (b + n_layers if b < 0 else b)
        out.update(range(a, b + 1))
    bad = sorted(i for i in out if not 0 <= i < n_layers)
    if bad:
        raise CaptureError(f"--layers {spec}: {bad} outside the model's {n_layers} layers")
    if not out:
        raise CaptureError(f"--layers {spec!r} selects no layer")
    return sorted(out)


def check_sampling_and_threads(a: argparse.Namespace) -> None:
    """Refuse values the sampler or torch would reject late or misread (before any load)."""
    if not (math.isfinite(a.temperature) and a.temperature > 0):
        raise CaptureError(f"--temperature {a.temperature}: must be a finite number > 0")
    if not (math.isfinite(a.top_p) and 0 < a.top_p <= 1):
        raise CaptureError(f"--top-p {a.top_p}: must be in (0, 1] (1 = off)")
    if a.top_k < 0:
        raise CaptureError(f"--top-k {a.top_k}: must be >= 0 (0 = off)")
    if not 0 <= a.threads <= 4096:
        raise CaptureError(f"--threads {a.threads}: must be in [0, 4096] (0 = automatic)")
    if a.seed < 0:
        raise CaptureError(f"--seed {a.seed}: must be >= 0")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kvsim_capture.py",
        description="Capture post-RoPE q/k/v of every attention layer from live runs of a Hugging Face "
                    "causal LM (prefill + real generated continuation) into a kvsim trace (HDF5, format v1).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="known models: " + "; ".join(f"{k} = {v}" for k, v in KNOWN.items()) +
               "\npresets: default-embedded (trace/data/smollm2_default.h5), large (both models; --out is a directory)")
    ap.add_argument("--model", help="smollm2 | gemma3-270m | path to a .gguf file | model directory "
                                    "(comma-separated list with --preset large)")
    ap.add_argument("--prompts", help="comma-separated kinds: passkey,needle,multidoc,continuation")
    ap.add_argument("--prompt-file", metavar="FILE",
                    help="your own prompts instead of --prompts: a .jsonl file (one JSON object per line: "
                         "\"prompt\", optional \"answer\" and \"continuation\") or a text file (one prompt "
                         "per block of lines separated by blank lines)")
    ap.add_argument("--dataset", metavar="NAME_OR_DIR",
                    help="prompts from a Hugging Face dataset split (needs the optional 'datasets' "
                         "package): a directory written by save_to_disk, or a dataset name")
    ap.add_argument("--split", default="train", help="with --dataset: the split (default train)")
    ap.add_argument("--revision", help="with --dataset NAME: the dataset revision (git ref)")
    ap.add_argument("--prompt-field", default="prompt", help="with --dataset: the prompt column (default prompt)")
    ap.add_argument("--answer-field", default="answer",
                    help="with --dataset: the reference answer column, used when present (default answer)")
    ap.add_argument("--continuation-field", default="continuation",
                    help="with --dataset: the reference continuation column, used when present "
                         "(default continuation)")
    ap.add_argument("--max-prompts", type=int, help="with --prompt-file or --dataset: use the first N prompts")
    ap.add_argument("--prompt-tokens", type=int, help="target prompt length in tokens (default 512)")
    ap.add_argument("--new-tokens", type=int, help="tokens generated after the prompt (default 64)")
    ap.add_argument("--repeats", type=int, help="prompts per kind, with seeds seed, seed+1, ... (default 1)")
    ap.add_argument("--out", "-o", help="trace file to write (a directory for --preset large)")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="stored type (default float16)")
    ap.add_argument("--layers", help="layers to store: all | list and ranges, e.g. 0,1,14-17,-2,-1")
    ap.add_argument("--seed", type=int, help="seed of the prompts and of sampling (default 0)")
    ap.add_argument("--sample", action="store_true", default=None, help="sample the continuation (default greedy)")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (with --sample)")
    ap.add_argument("--top-k", type=int, default=50, help="sampling top-k, 0 = off (with --sample)")
    ap.add_argument("--top-p", type=float, default=0.95, help="sampling nucleus, 1 = off (with --sample)")
    ap.add_argument("--allow-eos", action="store_true",
                    help="let the model pick EOS (default: EOS is banned so every sequence gets --new-tokens "
                         "tokens, as generate(min_new_tokens=N) does; generation never stops early)")
    ap.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                    help="wrap question prompts in the tokenizer's chat template (auto: if it has one)")
    ap.add_argument("--gzip", type=int, help="deflate level 0..9 (shuffle + deflate), default 0")
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    ap.add_argument("--model-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="dtype the model runs in (default float32; bfloat16 is usual on GPUs)")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa",
                    help="attention implementation the capture delegates to (default sdpa)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default: half the cores, 1 to 8: on a busy 2-core machine two "
                         "OpenMP threads were 4x slower than one)")
    ap.add_argument("--cache-dir", default=None, help=f"cache for assembled GGUF files and converted "
                                                      f"tokenizers (default {default_cache_dir()})")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration; explicit options override it")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return ap


def resolve_options(a: argparse.Namespace) -> argparse.Namespace:
    own_prompts = bool(a.prompt_file or a.dataset)
    if a.prompt_file and a.dataset:
        raise CaptureError("--prompt-file and --dataset: give one of them")
    if own_prompts and a.prompts is not None:
        raise CaptureError("--prompts names built-in kinds; with --prompt-file or --dataset leave it out")
    if a.max_prompts is not None and a.max_prompts < 1:
        raise CaptureError("--max-prompts must be >= 1")
    base = dict(DEFAULTS)
    if a.preset:
        base.update(PRESETS[a.preset])
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if not a.model:
        raise CaptureError("--model is required (or a --preset)")
    if not a.out:
        raise CaptureError("--out is required")
    if a.prompt_tokens < 16:
        raise CaptureError("--prompt-tokens must be at least 16")
    if a.new_tokens < 0:
        raise CaptureError("--new-tokens must be >= 0")
    if a.repeats < 1:
        raise CaptureError("--repeats must be >= 1")
    if not 0 <= a.gzip <= 9:
        raise CaptureError("--gzip must be 0..9")
    check_sampling_and_threads(a)
    if a.layers.strip().lower() not in ("all", "", "*"):
        _layer_parts(a.layers.strip().lower())  # syntax now; the range from the model's header
    sys.path.insert(0, PROMPTS_DIR)
    import make_prompts
    if own_prompts:  # read before the (slow) model load, so that a bad file fails fast
        from .prompt_sources import read_dataset, read_prompt_file
        if a.prompt_file:
            a.user_prompts, a.prompt_source = read_prompt_file(a.prompt_file)
        else:
            a.user_prompts, a.prompt_source = read_dataset(
                a.dataset, a.split, a.revision, a.prompt_field, a.answer_field,
                a.continuation_field, a.max_prompts)
        if a.max_prompts is not None:
            a.user_prompts = a.user_prompts[:a.max_prompts]
            a.prompt_source["prompts"] = len(a.user_prompts)
        a.kinds = []
        return a
    a.user_prompts = []
    kinds = [k.strip() for k in a.prompts.split(",") if k.strip()]
    bad = [k for k in kinds if k not in make_prompts.KINDS]
    if bad or not kinds:
        raise CaptureError(f"--prompts: unknown kind(s) {bad}; choose from {', '.join(make_prompts.KINDS)}")
    a.kinds = kinds
    a.prompt_source = {"type": "builtin", "kinds": kinds, "prompt_tokens": a.prompt_tokens,
                       "seed": a.seed, "repeats": a.repeats}
    return a


def check_writable(path: str) -> None:
    """Fail before the (slow) model load if the output cannot be written."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise CaptureError(f"output '{path}' is a directory")
    if not os.path.isdir(d):
        raise CaptureError(f"cannot write '{path}': directory '{d}' does not exist")
    probe = f"{os.path.abspath(path)}.tmp.{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise CaptureError(f"cannot write '{path}': {e.strerror or e}") from e


def capture_to_file(a, model_spec: str, out_path: str, log) -> dict:
    """Capture every prompt of `a` on one model into out_path. Returns a summary dict."""
    import make_prompts
    from . import models
    from .capture import answer_found, capture_sequence, eos_ids, text_config, trace_meta
    from .hook import AttentionRecorder
    from .progress import progress
    from .writer import TraceWriter

    check_writable(out_path)
    ref = models.resolve(model_spec, a.cache_dir)
    declared_layers = models.gguf_block_count(ref)
    if declared_layers is not None:  # the --layers range, before the (slow) model load
        parse_layers(a.layers, declared_layers)
    t_load = time.time()
    model, tok = models.load(ref, device=a.device, dtype=a.model_dtype, cache_dir=a.cache_dir, attn=a.attn, log=log,
                               quiet=a.quiet)
    t_load = time.time() - t_load
    import torch
    if a.device.startswith("cpu"):
        torch.set_num_threads(a.threads or max(1, min(8, (os.cpu_count() or 2) // 2)))
    cfg = text_config(model.config)
    n_layers = int(cfg.num_hidden_layers)
    layers = parse_layers(a.layers, n_layers)
    ctx = int(getattr(cfg, "max_position_embeddings", 0) or 0)
    if ctx and not a.user_prompts and a.prompt_tokens + a.new_tokens > ctx:
        raise CaptureError(f"--prompt-tokens + --new-tokens = {a.prompt_tokens + a.new_tokens} exceeds the "
                           f"model's context of {ctx} tokens")
    chat = {"auto": "auto", "on": True, "off": False}[a.chat]
    prompts, forced = [], []
    for r in range(a.repeats):
        for kind in a.kinds:
            prompts.append(make_prompts.make_prompt(kind, tok, a.prompt_tokens, a.seed + r, chat))
            forced.append([])
        for up in a.user_prompts:
            prompts.append(_user_prompt(up, tok, a, r, ctx))
            forced.append(list(tok.encode(up.continuation, add_special_tokens=False))[:a.new_tokens]
                          if up.continuation else [])
    banned = [] if a.allow_eos else eos_ids(model, tok)
    total = sum(p.num_tokens + a.new_tokens for p in prompts)
    bar = progress(total, desc=f"{ref.short}", unit="tok", disable=a.quiet)
    writer = None
    t0 = time.time()
    answers = []
    try:
        with AttentionRecorder(model, layers=layers, base=a.attn) as rec:
            for i, p in enumerate(prompts):
                bar.set_postfix_str(f"seq {i + 1}/{len(prompts)} {p.kind}")
                cap = capture_sequence(model, rec, p.input_ids, a.new_tokens, sample=bool(a.sample),
                                       temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                                       seed=a.seed * 1000 + i, banned_ids=banned, on_step=bar.update,
                                       forced_ids=forced[i])
                if writer is None:
                    meta = trace_meta(model, rec, cap.layers, ref)
                    meta["extra"].update({
                        "capture_tool": "kvsim trace/capture/kvsim_capture.py",
                        "capture_config": json.dumps({
                            "prompts": a.kinds or a.prompt_source["type"],
                            "prompt_tokens": None if a.user_prompts else a.prompt_tokens,
                            "new_tokens": a.new_tokens,
                            "repeats": a.repeats, "seed": a.seed, "sample": bool(a.sample),
                            "temperature": a.temperature if a.sample else None,
                            "top_k": a.top_k if a.sample else None, "top_p": a.top_p if a.sample else None,
                            "eos_banned": not a.allow_eos, "chat": a.chat, "device": a.device,
                            "model_dtype": a.model_dtype, "attn": a.attn, "preset": a.preset}),
                        "torch_version": torch.__version__,
                        "transformers_version": __import__("transformers").__version__,
                        "decoding": "sampled" if a.sample else "greedy",
                        "prompt_source": json.dumps(a.prompt_source),
                    })
                    try:
                        writer = TraceWriter(out_path, meta, dtype=a.dtype, gzip=a.gzip)
                    except OSError as e:
                        raise CaptureError(f"cannot write '{out_path}': {e}") from e
                gen_text = tok.decode(cap.token_ids[cap.prompt_len:], skip_special_tokens=True)
                answers.append((p.kind, p.answer, gen_text))
                attrs = {
                    "kind": p.kind, "prompt_seed": p.seed, "answer": p.answer,
                    "answer_found": max(0, answer_found(p.answer, gen_text, bool(a.user_prompts))),
                    "prompt_meta": json.dumps(p.meta), "generated_text": gen_text,
                }
                if a.user_prompts:
                    attrs["prompt_index"] = int(p.meta["source_index"])
                    attrs["continuation_tokens"] = len(forced[i])
                writer.add_sequence(cap.token_ids, cap.prompt_len, cap.q, cap.k, cap.v, attrs=attrs)
        bar.close()
        path = writer.close()
    except BaseException:
        bar.close()
        if writer is not None:
            writer.abort()
        raise
    secs = time.time() - t0
    size = os.path.getsize(path)
    ntok = sum(len(p.input_ids) + a.new_tokens for p in prompts)
    shown = (",".join(map(str, layers)) if len(layers) <= 8 and len(layers) < n_layers
             else f"{layers[0]}..{layers[-1]}")
    log(f"wrote {path}: {len(prompts)} sequences, {ntok} tokens, layers {shown} "
        f"({len(layers)} of {n_layers}), {a.dtype}, {size / 1e6:.2f} MB; capture {secs:.1f} s "
        f"({ntok / max(secs, 1e-9):.0f} tok/s), model load {t_load:.1f} s")
    for kind, ans, gen in answers:
        if ans:
            log(f"  {kind}: expected {ans!r}; model wrote {gen[:60]!r}")
    return {"path": path, "sequences": len(prompts), "tokens": ntok, "seconds": secs, "load_seconds": t_load,
            "bytes": size, "layers": layers}


def _user_prompt(up, tok, a, repeat: int, ctx: int):
    """A make_prompts.Prompt from one of the researcher's prompts (prompt_sources.UserPrompt):
    its text verbatim, or in the chat template with --chat on (auto means off here)."""
    import make_prompts
    from .prompt_sources import encode_prompt
    ids = encode_prompt(tok, up.text, a.chat == "on")
    where = f"prompt {up.index} of {a.prompt_file or a.dataset}"
    if ctx and len(ids) + a.new_tokens > ctx:
        raise CaptureError(f"{where}: {len(ids)} tokens + --new-tokens {a.new_tokens} exceed the model's "
                           f"context of {ctx} tokens")
    meta = {"source_index": up.index, "chat_template": a.chat == "on",
            "has_continuation": bool(up.continuation)}
    return make_prompts.Prompt(kind=a.prompt_source["type"], seed=a.seed + repeat, text=up.text,
                               input_ids=ids, answer=up.answer, meta=meta)


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    log = (lambda *x: None) if a.quiet else (lambda *x: print(*x, file=sys.stderr))
    if a.quiet:  # also silences the GGUF loader's tqdm bars (read when tqdm is first imported)
        os.environ["TQDM_DISABLE"] = "1"
    try:
        a = resolve_options(a)
        model_specs = [m.strip() for m in a.model.split(",") if m.strip()]
        if len(model_specs) > 1 or a.preset == "large":
            if not os.path.exists(a.out):
                os.makedirs(a.out)
            if not os.path.isdir(a.out):
                raise CaptureError(f"--out '{a.out}' must be a directory when capturing several models")
            suffix = f"_{a.preset}" if a.preset else ""
            for spec in model_specs:
                from .models import resolve
                short = resolve(spec, a.cache_dir).short
                capture_to_file(a, spec, os.path.join(a.out, f"{short}{suffix}.h5"), log)
        else:
            capture_to_file(a, model_specs[0], a.out, log)
    except CaptureError as e:
        print(f"kvsim_capture: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"kvsim_capture: error: {e}; install the capture packages: bash trace/capture/install.sh",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvsim_capture: interrupted; no trace written", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        print(f"kvsim_capture: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
