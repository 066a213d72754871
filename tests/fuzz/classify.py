#!/usr/bin/env python3
"""Classifies libFuzzer findings: in kvsim's code, or inside the HDF5 library.

    python3 tests/fuzz/classify.py HARNESS_BINARY FINDING...

Each finding is re-run alone; its first stack trace is read, frames of the sanitizers,
libFuzzer, libc and the C++ runtime are skipped, and the first remaining frame decides:
in libhdf5 -> "hdf5" (a limit of the library, docs/reliability.md), anything else -> "kvsim".
An input that exceeds libFuzzer's -rss_limit_mb without one large allocation has no telling
stack (libFuzzer prints its own); it is listed as "rss" for a look by hand (run it under
gdb: the one found so far grows inside libhdf5's H5T__conv_vlen, a damaged global heap).
Prints one line per finding; exit status 1 when any finding is kvsim's.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

SKIP = re.compile(r"__interceptor_|__sanitizer|__asan|__ubsan|__lsan|fuzzer::|LLVMFuzzer|"
                  r"libc\.so|libstdc\+\+|libgcc|\bmalloc\b|\bcalloc\b|\brealloc\b|memcpy|memmove|"
                  r"__restore_rt|sigaction|raise|abort|in operator new|libFuzzer|"
                  r"kvsim_fuzz_\w+\+0x")
FRAME = re.compile(r"^\s*#\d+ 0x[0-9a-f]+ (.*)$")


def classify(binary: str, finding: str) -> tuple[str, str]:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:symbolize=1")
    run = subprocess.run([binary, "-timeout=10", "-rss_limit_mb=2048", "-malloc_limit_mb=1024",
                          finding], capture_output=True, text=True, env=env, timeout=300)
    if "libFuzzer: out-of-memory (used:" in run.stdout + run.stderr:
        return "rss", "resident memory above -rss_limit_mb (no single large allocation)"
    for line in (run.stdout + run.stderr).splitlines():
        m = FRAME.match(line)
        if not m or SKIP.search(m.group(1)):
            continue
        where = m.group(1)
        return ("hdf5" if "libhdf5" in where else "kvsim"), where
    return ("kvsim" if run.returncode else "gone"), "no stack (exit %d)" % run.returncode


def main() -> int:
    binary, findings = sys.argv[1], sys.argv[2:]
    ours = 0
    for finding in findings:
        kind, where = classify(binary, finding)
        ours += kind == "kvsim"
        print(f"{kind:5s} {os.path.basename(finding)}: {where[:160]}")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main())
