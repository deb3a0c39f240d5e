"""Final-answer extraction and equivalence for math tasks (docs/method.md, section 3).

The answer of a response is the content of its last `\\boxed{}`; equivalence is math-verify's,
gold first. A response without a box is wrong, never an error.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence

from math_verify import parse, verify

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PERCENT = re.compile(r"\\?%")
# LaTeX thousands separators between digit groups: a thin space `1\,000` (common in model output), `1{,}000`,
# and the wider spaces `1\;000`, `1\ 000`, `1~000`.
_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,; ]|\{,\}|~)(?=\d{3}(?!\d))")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included; None if there is none."""
    starts = [m.end() for m in _BOX.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def gsm8k_gold(answer: str) -> str:
    """GSM8K's gold: the number after '####' (or the whole field), without thousands separators."""
    value = answer.split("####")[-1].strip()
    return value.replace(",", "").replace("$", "").strip()


def _normalise(answer: str) -> str:
    # Percent signs carry no value here: "50\\%" and "50" are the same answer; nor do thousands separators.
    return _THOUSANDS.sub("", _PERCENT.sub("", answer)).strip()


def equivalent(gold: str, predicted: str | None, timeout_s: float = 5) -> bool:
    """math-verify equivalence, gold first, with a time limit per check in whole seconds, rounded up (none off
    the main thread, where math-verify's signal-based timeout cannot run). math-verify's `parse` finds
    nothing under a float limit, which would score every answer not spelled like the gold as wrong."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s}: give a positive number of seconds")
    if predicted is None or not predicted.strip():
        return False
    limit = math.ceil(timeout_s) if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"\\boxed{{{_normalise(gold)}}}", parsing_timeout=limit)
    pred_parsed = parse(f"\\boxed{{{_normalise(predicted)}}}", parsing_timeout=limit)
    if not gold_parsed or not pred_parsed:
        return _normalise(gold).replace(" ", "") == _normalise(predicted).replace(" ", "")
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool] = equivalent,
                  weights: Sequence[float] | None = None) -> str | None:
    """The answer of the group of `same` answers (math-verify equivalence by default) with the largest
    total weight (1 per answer unless `weights` are given, e.g. reward-model scores); ties go to the
    group seen first. Missing answers (no box) do not vote; None if nobody voted."""
    groups: list[tuple[str, list[float]]] = []
    for answer, weight in zip(answers, weights if weights is not None else [1.0] * len(answers), strict=True):
        if answer is None or not answer.strip():
            continue
        for first, members in groups:
            if same(first, answer):
                members.append(weight)
                break
        else:
            groups.append((answer, [weight]))
    if not groups:
        return None
    return max(groups, key=lambda g: sum(g[1]))[0]  # max keeps the first of equal totals
