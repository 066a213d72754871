"""python -m kvsim.live: closed-loop outcomes of policies in a live model (docs/closed-loop.md)."""
from __future__ import annotations

import argparse
import sys

from .. import _core


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m kvsim.live",
        description="Run a live model with its KV cache held by kvsim policies; write the "
                    "closed-loop outcomes per (policy, sequence) to HDF5. `full` always runs "
                    "first: it is the reference. Resumable: rerun the same command after a "
                    "kill.")
    ap.add_argument("--model", required=True, choices=["smollm2", "gemma3-270m"])
    ap.add_argument("--trace", required=True,
                    help="prompts and reference continuation: a trace of "
                         "trace/capture/kvsim_capture.py for the same model")
    grid = ap.add_mutually_exclusive_group(required=True)
    grid.add_argument("--sweep", metavar="GRID.yaml",
                      help="policy grids in the syntax of `kvsim sweep` (its traces unused)")
    grid.add_argument("--policy", action="append", metavar="SPEC",
                      help="a policy spec (repeat for several)")
    ap.add_argument("--out", required=True, help="closed-loop results file (HDF5)")
    ap.add_argument("--max-new-tokens", type=int, default=32,
                    help="tokens of free greedy generation (default 32)")
    ap.add_argument("--sequences", help="comma-separated sequence indices (default: all)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    from . import load_closed_loop, run, sweep_specs  # after --help: torch loads slowly
    try:
        seqs = None
        if a.sequences:
            try:
                seqs = [int(s) for s in a.sequences.split(",")]
            except ValueError:
                raise _core.ConfigError(f"--sequences '{a.sequences}': not a comma-separated "
                                        "list of integers") from None
        specs = sweep_specs(a.sweep) if a.sweep else a.policy
        run(a.model, a.trace, specs, a.out, max_new_tokens=a.max_new_tokens, sequences=seqs,
            threads=a.threads)
    except _core.ConfigError as e:
        print(f"kvsim.live: error: {e}", file=sys.stderr)
        return 2
    except (_core.Error, OSError) as e:
        print(f"kvsim.live: error: {e}", file=sys.stderr)
        return 1
    frame = load_closed_loop(a.out)
    print(frame[["run", "sequence", "nll", "delta_nll", "kl_mean", "top1_agreement",
                 "answer_correct", "token_agreement", "memory_ratio", "seconds"]]
          .to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
