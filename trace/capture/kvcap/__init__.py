"""kvcap: capture kvsim traces (docs/trace-format.md) from live runs of Hugging Face models.

Lives in trace/capture/ and is imported with that directory on sys.path (the repository's
`trace/` directory cannot be a Python package: it would shadow the standard library's
`trace` module). The command line is trace/capture/kvsim_capture.py.
"""
__version__ = "1.0.0"
