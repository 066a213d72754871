#!/usr/bin/env python3
"""Capture kvsim traces from live runs of real models. See docs/capture.md.

    python3 trace/capture/kvsim_capture.py --model smollm2 \
        --prompts passkey,needle,multidoc,continuation --prompt-tokens 512 --new-tokens 64 \
        --out trace.h5 [--dtype float16] [--layers 0,1,...] [--seed 0] [--sample]
    python3 trace/capture/kvsim_capture.py --preset default-embedded --out trace/data/smollm2_default.h5
    python3 trace/capture/kvsim_capture.py --preset large --out traces/
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kvcap.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
