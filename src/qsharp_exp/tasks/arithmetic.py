"""`arithmetic`: GSM8K-style multi-step word problems generated from templates.

A CPU-sized stand-in for GSM8K: same prompt, same `\\boxed{}` answers, same reward and metrics, but
small enough that a tiny pi_ref pretrained here reaches partial accuracy, so the return model has a
real signal to learn from. Difficulty: `task.min_ops`..`task.max_ops` operations on numbers up to
`task.max_number`.

pi_ref learns from worked solutions written by a demonstrator of mixed quality (docs/math.md): at each
step of a given kind it writes a plausible wrong step with a set rate (`task.slip_*`), and carries on
correctly from the wrong number, so the solution ends in a wrong answer. Every pi_ref learns those rates,
whatever its seed: the errors a return model must learn to see are the task's, not one seed's accident.
Only the `pretrain` split (pi_ref's training solutions) is written this way; `train` and `test` keep right
solutions, which tools use as references.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import ClassVar

from qsharp_exp.config import SPLIT_SIZES, at_least, in_unit_interval
from qsharp_exp.tasks.answers import last_boxed
from qsharp_exp.tasks.base import register_task
from qsharp_exp.tasks.math import MathConfig, MathRecord, MathTask
from qsharp_exp.tasks.splits import draw_distinct_splits

SLIPS = ("multiplier", "sign", "carry")  # the demonstrator's kinds of wrong step, one setting each


@dataclass
class ArithmeticConfig(MathConfig):
    # Operations per word problem (inclusive range) and the largest starting number.
    min_ops: int = 1
    max_ops: int = 2
    max_number: int = 20
    # The demonstrator's rate of a wrong step, per step where the kind can occur (pi_ref's solutions only):
    # `multiplier`: `* 3` after "doubles" or `* 2` after "triples"; `sign`: `+` after "giving ... away";
    # `carry`: a step after the first starts from the number the step before started from, not its result.
    slip_multiplier: float = 0.0
    slip_sign: float = 0.0
    slip_carry: float = 0.0
    # Each sentence of a worked solution in one of two or three wordings drawn uniformly (value-neutral choices);
    # false: one wording. docs/math.md measures what it did to learning.
    vary_wording: bool = False
    generates_problems: ClassVar[bool] = True
    draw_order: ClassVar[tuple[str, ...]] = ("test", "pretrain", "train")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "min_ops", 1)
        at_least(self, "max_ops", self.min_ops, " (task.min_ops)")
        at_least(self, "max_number", 2)
        for kind in SLIPS:
            in_unit_interval(self, f"slip_{kind}")

    @property
    def slip_rates(self) -> dict[str, float]:
        return {kind: getattr(self, f"slip_{kind}") for kind in SLIPS}


NAMES = [("Tom", "He"), ("Anna", "She"), ("Ben", "He"), ("Mia", "She"), ("Leo", "He"), ("Zoe", "She")]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "cards"]
FRIENDS = ["a friend", "his sister", "her brother", "a neighbour", "the teacher"]
MULTIPLIER_WORDS = {2: "doubles", 3: "triples"}


@dataclass(frozen=True)
class Step:
    kind: str  # "add", "sub" or "mul"
    operand: int
    asked: str  # the problem's sentence

    def apply(self, value: int, sign: int = 1) -> int:
        if self.kind == "mul":
            return value * self.operand
        return value + sign * (self.operand if self.kind == "add" else -self.operand)


def _step(rng: random.Random, value: int, max_number: int, pronoun: str) -> Step:
    """One operation of the problem, drawn so that the right value stays positive."""
    kinds = ["add", "mul"] + (["sub"] if value > 1 else [])
    kind = rng.choice(kinds)
    if kind == "add":
        b = rng.randint(1, max_number)
        return Step(kind, b, f"{pronoun} buys {b} more.")
    if kind == "sub":
        b = rng.randint(1, value - 1)
        return Step(kind, b, f"{pronoun} gives {b} to {rng.choice(FRIENDS)}.")
    k = rng.randint(2, 3)
    return Step(kind, k, f"Then the number {MULTIPLIER_WORDS[k]}.")


# Wordings of each sentence, drawn uniformly: choices that do not change the value of a solution, as most of a
# real solution's tokens are (a guide that over-commits to noise in its values pays KL there for nothing).
LEAD_INS = {
    "add": ("After buying {b} more: ", "Buying {b} more gives ", "With {b} more: "),
    "sub": ("After giving {b} away: ", "Giving {b} away leaves ", "Without the {b} given away: "),
    "mul": ("After it {word}: ", "As the number {word}: ", "When it {word}: "),
}
OPENINGS = ("{name} starts with {start} {items}.", "At first {name} has {start} {items}.")
CLOSINGS = ("The answer is \\boxed{{{value}}}.", "So the answer is \\boxed{{{value}}}.")


def worked_step(step: Step, start: int, slip: str | None = None, wording: int = 0) -> tuple[str, int]:
    """The solution's sentence for `step` from `start` in its `wording`-th wording, and the value it reaches;
    `slip` writes the step wrong in that way ("multiplier" or "sign"; a carry slip is in the `start` the caller
    passes)."""
    op, k = {"add": "+", "sub": "-", "mul": "*"}[step.kind], step.operand
    if slip == "multiplier":
        k = 5 - k  # 2 <-> 3
    elif slip == "sign":
        op = "+"
    end = {"+": start + k, "-": start - k, "*": start * k}[op]
    lead = LEAD_INS[step.kind][wording].format(b=step.operand, word=MULTIPLIER_WORDS.get(step.operand, ""))
    return f"{lead}{start} {op} {k} = {end}.", end


def demonstrate(steps: list[Step], start: int, rates: dict[str, float], rng: random.Random,
                vary_wording: bool = False) -> tuple[list[str], list[str]]:
    """A worked solution from the demonstrator: (sentences, the slips it made). With every rate 0 it is the
    right solution. After a slip it carries on correctly from the wrong number."""
    sentences, slips = [], []
    previous_start, value = start, start
    for i, step in enumerate(steps):
        step_start = value
        if i > 0 and rng.random() < rates["carry"]:
            step_start = previous_start
            slips.append("carry")
        slip = None
        if step.kind == "mul" and rng.random() < rates["multiplier"]:
            slip = "multiplier"
        elif step.kind == "sub" and rng.random() < rates["sign"]:
            slip = "sign"
        if slip:
            slips.append(slip)
        wording = rng.randrange(len(LEAD_INS[step.kind])) if vary_wording else 0
        sentence, value = worked_step(step, step_start, slip, wording)
        sentences.append(sentence)
        previous_start = step_start
    return sentences, slips


@dataclass(frozen=True)
class WordProblem:
    question: str
    name: str
    items: str
    start: int
    steps: tuple[Step, ...]

    @property
    def answer(self) -> int:
        value = self.start
        for step in self.steps:
            value = step.apply(value)
        return value


def word_problem(rng: random.Random, min_ops: int, max_ops: int, max_number: int) -> WordProblem:
    name, pronoun = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    start = value = rng.randint(2, max_number)
    steps = []
    for _ in range(rng.randint(min_ops, max_ops)):
        steps.append(_step(rng, value, max_number, pronoun))
        value = steps[-1].apply(value)
    question = " ".join([f"{name} has {start} {items}.", *(s.asked for s in steps),
                         f"How many {items} does {name} have now?"])
    return WordProblem(question, name, items, start, tuple(steps))


def worked_solution(problem: WordProblem, rates: dict[str, float] | None = None, seed: str = "",
                    vary_wording: bool = False) -> str:
    """The solution ending in \\boxed{...}: right, or the demonstrator's with `rates`, in wordings drawn
    uniformly with `vary_wording` (slips and wordings come from a stream named by `seed` and the question, so
    they do not move the problems drawn after)."""
    rng = random.Random(f"slips-{seed}-{problem.question}")
    opening, closing = (rng.choice(OPENINGS), rng.choice(CLOSINGS)) if vary_wording else (OPENINGS[0], CLOSINGS[0])
    sentences, _ = demonstrate(list(problem.steps), problem.start, rates or dict.fromkeys(SLIPS, 0.0), rng,
                               vary_wording)
    written = sentences[-1].rsplit("= ", 1)[1].rstrip(".")
    return " ".join([opening.format(name=problem.name, start=problem.start, items=problem.items), *sentences,
                     closing.format(value=written)])


def generate_records(cfg: ArithmeticConfig) -> dict[str, list[MathRecord]]:
    """Deterministic by `cfg.seed`; one random stream per split, no question in two splits. The demonstrator's
    slips are in the pretraining solutions only."""
    splits = draw_distinct_splits(
        {split: getattr(cfg, SPLIT_SIZES[split]) for split in cfg.draw_order},
        stream=lambda split: f"{cfg.seed}-arithmetic-{split}",
        draw=lambda rng: word_problem(rng, cfg.min_ops, cfg.max_ops, cfg.max_number),
        key=lambda problem: problem.question,
        hint="raise task.max_number or task.max_ops, or lower the split sizes.",
    )
    records = {split: [MathRecord(f"{split}-{i}", p.question,
                                  worked_solution(p, cfg.slip_rates if split == "pretrain" else None, str(cfg.seed),
                                                  cfg.vary_wording),
                                  str(p.answer))
                       for i, p in enumerate(problems)]
               for split, problems in splits.items()}
    records["validation"] = []
    return records


@register_task("arithmetic", ArithmeticConfig)
def build_arithmetic_task(cfg: ArithmeticConfig) -> MathTask:
    return MathTask(cfg, generate_records(cfg))


# -- reading a response: which decision went wrong first ------------------------------------------------

_ASKED = re.compile(r"has (\d+) \w+\.|buys (\d+) more\.|gives (\d+) to|the number (doubles|triples)\.")
EQUATION_TEXT = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)")
ERROR_KINDS = ("right", *SLIPS, "arithmetic", "other")


def error_kind(question: str, response: str, answer: str) -> str:
    """`right` for a response whose boxed answer is right; else its first wrong decision, by kind: one of the
    demonstrator's slips (`multiplier`, `sign`: the wrong operator of a sum or difference, `carry`), `arithmetic`
    (a result that does not follow from its
    equation), or `other` (a copied operand, a missing step, a wrong box). For error tables (docs/math.md)."""
    boxed = last_boxed(response)
    if boxed is not None and boxed.strip() == answer:
        return "right"
    asked = _ASKED.findall(question)
    start = int(asked[0][0])
    wanted = [("add", int(b)) if b else ("sub", int(g)) if g else ("mul", 2 if m == "doubles" else 3)
              for _, b, g, m in asked[1:]]
    written = EQUATION_TEXT.findall(response)
    previous: tuple[int, int] = (start, start)  # (start, result) of the step before
    for i, ((kind, operand), (a, op, b, c)) in enumerate(zip(wanted, written, strict=False)):
        a, b, c = int(a), int(b), int(c)
        if a != previous[1]:
            return "carry" if i > 0 and a == previous[0] else "other"
        if kind == "mul" and op == "*" and b != operand:
            return "multiplier"
        if kind in ("add", "sub") and op == {"add": "-", "sub": "+"}[kind] and b == operand:
            return "sign"  # the demonstrator's slip is `+` for "giving away"; pi_ref may also write `-` for "buying"
        if (op, b) != ({"add": "+", "sub": "-", "mul": "*"}[kind], operand):
            return "other"
        if c != {"+": a + b, "-": a - b, "*": a * b}[op]:
            return "arithmetic"
        previous = (a, c)
    return "other"
