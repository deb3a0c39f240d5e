"""`qsharp-lm-eval`: lm-evaluation-harness's own command line, with the guided model `qsharp` (harness.py)
registered; every other model and flag of `lm_eval` works as there."""

from __future__ import annotations

import sys

import qsharp_exp.harness  # noqa: F401  (registers the model `qsharp`)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "qsharp-lm-eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
