"""qsharp_exp: Q#, CD and pi_ref value-guided decoding experiments. The Python API is documented in
docs/api.md: compose a config, run a pipeline, load pi_ref and a trained guide, guide `model.generate`."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# transformers' Auto classes learn the return model and the conv-stem models (AutoModel.from_pretrained(folder)).
from qsharp_exp.models import return_model as _return_model  # noqa: F401
from qsharp_exp.models import stem as _stem  # noqa: F401

try:
    __version__ = version("qsharp_exp")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Imported on first use.
_API = {"compose_config": "qsharp_exp.api", "run": "qsharp_exp.api", "load_pi_ref": "qsharp_exp.api",
        "load_guide": "qsharp_exp.api", "GuidanceLogitsProcessor": "qsharp_exp.sampling.logits_processor",
        "SamplingSpec": "qsharp_exp.sampling.decoding"}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'qsharp_exp' has no attribute {name!r}")
