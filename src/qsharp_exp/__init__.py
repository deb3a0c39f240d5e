"""qsharp_exp: Q#, CD and pi_ref value-guided decoding experiments. The Python API is documented in
docs/api.md: compose a config, run a pipeline, load pi_ref and a trained guide, guide `model.generate`."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C in a `python -m qsharp_exp...` program before it handles interrupts itself (its imports take
    seconds): one line and exit code 130, no traceback. The pipeline takes Ctrl-C over once it starts."""
    sys.stderr.write("interrupted.\n")
    os._exit(130)


# `python -m` imports the package while it locates the program, with sys.argv[0] == "-m"; a console command
# (`qsharp-run`, ...) has its own name there. From this line on.
_PROGRAM = sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0] if sys.argv else "").startswith("qsharp-")
if _PROGRAM and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)

import importlib  # noqa: E402  (after the handler: imports take seconds)
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from typing import Any  # noqa: E402

# transformers' Auto classes learn the return model and the conv-stem models (AutoModel.from_pretrained(folder)).
from qsharp_exp.models import return_model as _return_model  # noqa: E402, F401
from qsharp_exp.models import stem as _stem  # noqa: E402, F401

try:
    __version__ = version("qsharp_exp")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Imported on first use.
_API = {"compose_config": "qsharp_exp.api", "run": "qsharp_exp.api", "load_pi_ref": "qsharp_exp.api",
        "load_guide": "qsharp_exp.api", "GuidanceLogitsProcessor": "qsharp_exp.sampling.logits_processor",
        "GuidanceSettings": "qsharp_exp.guidance", "SamplingSpec": "qsharp_exp.sampling.decoding"}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'qsharp_exp' has no attribute {name!r}")
