"""The math base model's corpus: calculations written as text, the CPU analogue of a language-pretrained
LM's arithmetic (docs/method.md, section 4).

A line is a chain of 1..`max_steps` equations, each starting from the previous result:
`37 + 48 = 85. 85 * 3 = 255. 255 - 19 = 236.` Operands are drawn up to `max_operand`, multipliers from
2..9, and a subtraction never goes below 1. Predicting a line means adding, subtracting and multiplying
several-digit numbers with carries and copying a result into the next equation: the capability that
checking a worked solution needs. No line is a word problem (no names, items or sentences of the
`arithmetic` task's templates; tested): the corpus gives the capability, not the task.
"""

from __future__ import annotations

import random

MULTIPLIERS = range(2, 10)


def calculation_line(rng: random.Random, max_operand: int, max_steps: int) -> tuple[str, list[tuple[int, int]]]:
    """(text, character spans of each result)."""
    value = rng.randint(2, max_operand)
    text, spans = "", []
    for step in range(rng.randint(1, max_steps)):
        kinds = ["+", "*"] + (["-"] if value > 1 else [])
        kind = rng.choice(kinds)
        if kind == "+":
            operand = rng.randint(1, max_operand)
            result = value + operand
        elif kind == "-":
            operand = rng.randint(1, min(value - 1, max_operand))
            result = value - operand
        else:
            operand = rng.choice(MULTIPLIERS)
            result = value * operand
        text += f"{' ' if step else ''}{value} {kind} {operand} = "
        spans.append((len(text), len(text) + len(str(result))))
        text += f"{result}."
        value = result
    return text, spans


def calculation_lines(lines: int, max_operand: int, max_steps: int, seed: int | str
                      ) -> list[tuple[str, list[tuple[int, int]]]]:
    """`lines` lines, deterministic in `seed`."""
    rng = random.Random(f"arithmetic-corpus-{seed}")
    return [calculation_line(rng, max_operand, max_steps) for _ in range(lines)]
