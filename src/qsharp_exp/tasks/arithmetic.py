"""`arithmetic`: GSM8K-style multi-step word problems generated from templates.

A CPU-sized stand-in for GSM8K: same prompt, same `\\boxed{}` answers, same reward and metrics, but
small enough that a tiny pi_ref pretrained here reaches partial accuracy, so the return model has a
real signal to learn from. Difficulty: `task.min_ops`..`task.max_ops` operations on numbers up to
`task.max_number`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from qsharp_exp.config import SPLIT_SIZES, at_least
from qsharp_exp.tasks.base import register_task
from qsharp_exp.tasks.math import MathConfig, MathRecord, MathTask
from qsharp_exp.tasks.splits import draw_distinct_splits


@dataclass
class ArithmeticConfig(MathConfig):
    # Operations per word problem (inclusive range) and the largest starting number.
    min_ops: int = 1
    max_ops: int = 2
    max_number: int = 20
    generates_problems: ClassVar[bool] = True
    draw_order: ClassVar[tuple[str, ...]] = ("test", "pretrain", "train")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "min_ops", 1)
        at_least(self, "max_ops", self.min_ops, " (task.min_ops)")
        at_least(self, "max_number", 2)


NAMES = [("Tom", "He"), ("Anna", "She"), ("Ben", "He"), ("Mia", "She"), ("Leo", "He"), ("Zoe", "She")]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "cards"]
FRIENDS = ["a friend", "his sister", "her brother", "a neighbour", "the teacher"]


def _step(rng: random.Random, value: int, max_number: int, pronoun: str) -> tuple[str, str, int]:
    """One operation: (sentence of the problem, sentence of the solution, new value)."""
    kinds = ["add", "mul"] + (["sub"] if value > 1 else [])
    kind = rng.choice(kinds)
    if kind == "add":
        b = rng.randint(1, max_number)
        return (f"{pronoun} buys {b} more.", f"After buying {b} more: {value} + {b} = {value + b}.", value + b)
    if kind == "sub":
        b = rng.randint(1, value - 1)
        friend = rng.choice(FRIENDS)
        return (f"{pronoun} gives {b} to {friend}.", f"After giving {b} away: {value} - {b} = {value - b}.",
                value - b)
    k = rng.randint(2, 3)
    word = {2: "doubles", 3: "triples"}[k]
    return (f"Then the number {word}.", f"After it {word}: {value} * {k} = {value * k}.", value * k)


def word_problem(rng: random.Random, min_ops: int, max_ops: int, max_number: int) -> tuple[str, str, str]:
    """(question, worked solution ending in \\boxed{answer}, answer)."""
    name, pronoun = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    value = rng.randint(2, max_number)
    question = [f"{name} has {value} {items}."]
    solution = [f"{name} starts with {value} {items}."]
    for _ in range(rng.randint(min_ops, max_ops)):
        asked, worked, value = _step(rng, value, max_number, pronoun)
        question.append(asked)
        solution.append(worked)
    question.append(f"How many {items} does {name} have now?")
    solution.append(f"The answer is \\boxed{{{value}}}.")
    return " ".join(question), " ".join(solution), str(value)


def generate_records(cfg: ArithmeticConfig) -> dict[str, list[MathRecord]]:
    """Deterministic by `cfg.seed`; one random stream per split, no question in two splits."""
    splits = draw_distinct_splits(
        {split: getattr(cfg, SPLIT_SIZES[split]) for split in cfg.draw_order},
        stream=lambda split: f"{cfg.seed}-arithmetic-{split}",
        draw=lambda rng: word_problem(rng, cfg.min_ops, cfg.max_ops, cfg.max_number),
        key=lambda problem: problem[0],
        hint="raise task.max_number or task.max_ops, or lower the split sizes.",
    )
    records = {split: [MathRecord(f"{split}-{i}", *problem) for i, problem in enumerate(problems)]
               for split, problems in splits.items()}
    records["validation"] = []
    return records


@register_task("arithmetic", ArithmeticConfig)
def build_arithmetic_task(cfg: ArithmeticConfig) -> MathTask:
    return MathTask(cfg, generate_records(cfg))
