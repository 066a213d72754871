"""A progress bar with ETA: tqdm when installed, else a plain one on stderr."""
from __future__ import annotations

import sys
import time


class _Plain:
    def __init__(self, total: int, desc: str, unit: str, disable: bool):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.n = 0
        self.t0 = time.time()
        self.last = 0.0
        self.postfix = ""

    def update(self, k: int = 1):
        self.n += k
        now = time.time()
        if not self.disable and (now - self.last > 0.5 or self.n >= self.total):
            self.last = now
            self._draw(now)

    def set_postfix_str(self, s: str):
        self.postfix = s

    def _draw(self, now):
        el = now - self.t0
        frac = self.n / self.total if self.total else 1.0
        eta = el / frac - el if frac > 0 else float("nan")
        width = 30
        bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
        msg = (f"\r{self.desc}: [{bar}] {self.n}/{self.total} {self.unit} "
               f"{el:5.0f}s elapsed, ETA {eta:5.0f}s {self.postfix}")
        sys.stderr.write(msg[:160])
        sys.stderr.flush()

    def close(self):
        if not self.disable:
            self._draw(time.time())
            sys.stderr.write("\n")
            sys.stderr.flush()


def progress(total: int, desc: str = "capture", unit: str = "tok", disable: bool = False):
    try:
        from tqdm import tqdm
    except ImportError:
        return _Plain(total, desc, unit, disable)
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr,
                smoothing=0.1)
