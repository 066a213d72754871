"""kvsim in Python: replay KV-cache compression policies over recorded attention traces.

The C++ engine is the extension module ``kvsim._core``; this package is its Python API
(docs/python.md)::

    import kvsim
    trace = kvsim.open_trace(kvsim.embedded_trace())
    res = kvsim.replay(trace, ["full", "kivi:bits=2", "h2o+kivi"])
    res.summary                      # a pandas DataFrame, one row per policy

Policies, specs and errors are the CLI's: ``kvsim.policies()``, ``kvsim.parse_spec()``,
``kvsim.ConfigError`` and friends carry the messages ``kvsim`` prints. Eviction scorers
can be written in Python with :func:`kvsim.scorer`.
"""

from __future__ import annotations

import pkgutil

# When this source folder (analysis/kvsim) comes first on sys.path, e.g. for a script that
# puts analysis/ on it, the compiled module is found in the installed copy of the package.
__path__ = pkgutil.extend_path(__path__, __name__)

from . import _core  # noqa: E402
from ._core import (  # noqa: E402
    BackendUnavailable,
    ConfigError,
    Error,
    FormatError,
    InternalError,
    IoError,
    ScoreView,
)
from .policies import Param, Policy, Spec, StageSpec, parse_spec, policies, scorer  # noqa: E402
from .results import Results, load_results, replay  # noqa: E402
from .trace import Trace, embedded_trace, open_trace, synth  # noqa: E402

#: A trace file that does not follow docs/trace-format.md (the C++ FormatError).
TraceFormatError = FormatError

__version__: str = _core.__version__

__all__ = [
    "BackendUnavailable", "ConfigError", "Error", "FormatError", "InternalError", "IoError",
    "Param", "Policy", "Results", "ScoreView", "Spec", "StageSpec", "Trace", "TraceFormatError",
    "embedded_trace", "load_results", "open_trace", "parse_spec", "policies", "replay", "scorer",
    "synth",
]
