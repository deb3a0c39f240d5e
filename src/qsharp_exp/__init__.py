"""qsharp_exp: Q#, CD and pi_ref value-guided decoding experiments. The Python API is documented in
docs/api.md: compose a config, run a pipeline, load pi_ref and a trained guide, guide `model.generate`."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("qsharp_exp")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Imported on first use, so that `python -m qsharp_exp` with a bad config answers before torch is loaded.
_API = {"compose": "qsharp_exp.api", "run": "qsharp_exp.api", "load_pi_ref": "qsharp_exp.api",
        "load_guide": "qsharp_exp.api", "GuidanceLogitsProcessor": "qsharp_exp.sampling.logits_processor"}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'qsharp_exp' has no attribute {name!r}")
