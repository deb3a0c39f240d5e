"""When to stop training a return model: once its validation accuracy has stopped improving at every response
position, within a maximum budget (docs/method.md, section 2, "Training until the values are learned").

The return model learns a long decision backwards from the reward (star-graph: one hop from the goal after
another, the first choice last), so a fixed number of epochs ends either long after the last hop was learned
or just before it. The rule watches each position's accuracy separately: a position that starts to be
learned is an improvement even while the others are flat, and positions that cannot be predicted (before
pi_ref's own coin flips) never hold training back. The decision is a pure function of the learning curve,
which resumable checkpoints carry, so a resumed run stops at the same step as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class StopReason(str, Enum):
    converged = "converged"  # no position improved for `patience` evaluations
    budget = "budget"  # the budget ended while the model was still improving: more steps would have helped
    fixed = "fixed"  # patience 0: the whole budget by design (the paper's fixed epochs)


NOISE_SE = 2.0  # a gain smaller than this many standard errors of the accuracy is within the split's noise


@dataclass(frozen=True)
class PlateauRule:
    """Stop after `patience` evaluations in which no response position's validation accuracy rose above its best
    so far by at least `min_delta` and by more than NOISE_SE standard errors of an accuracy on that position's
    number of validation examples. The second bar keeps positions that cannot be predicted (whose accuracy
    swings as the model's value there crosses 0.5) and positions with few examples from holding training
    back. patience 0 disables the rule."""

    patience: int
    min_delta: float

    def evaluations_without_improvement(self, curve: list[dict]) -> int:
        best: dict[str, float] = {}
        since = 0
        for point in curve:
            if "val_acc_by_pos" not in point:
                continue
            counts = {str(k): v for k, v in point.get("val_count_by_pos", {}).items()}  # str keys after JSON
            improved = False
            for position, accuracy in point["val_acc_by_pos"].items():
                position = str(position)
                if position not in best or accuracy >= best[position] + self.needed_gain(best[position],
                                                                                        counts.get(position)):
                    best[position] = accuracy
                    improved = True
            since = 0 if improved else since + 1
        return since

    def needed_gain(self, best: float, examples: int | None) -> float:
        """The gain over `best` that counts as an improvement when measured on `examples` validation examples
        (the accuracy's variance is floored at that of a single miss, so that a perfect score is not noise-free)."""
        if not examples:
            return self.min_delta
        variance = max(best * (1 - best), 1 / examples) / examples
        return max(self.min_delta, NOISE_SE * math.sqrt(variance))

    def converged(self, curve: list[dict]) -> bool:
        return self.patience > 0 and self.evaluations_without_improvement(curve) >= self.patience

    def reason(self, curve: list[dict]) -> StopReason:
        """Why training that ended with `curve` stopped."""
        if self.patience == 0:
            return StopReason.fixed
        return StopReason.converged if self.converged(curve) else StopReason.budget


def stop_record(curve: list[dict]) -> dict | None:
    """The curve's closing record (`stopped`, `trained_steps`, `budget_steps`), None for curves saved before it."""
    return next((p for p in reversed(curve) if "stopped" in p), None)
