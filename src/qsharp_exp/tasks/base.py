"""What every task provides to the shared pipeline; everything else is task-independent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerFast


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # the text pi_ref continues
    answer: str  # the gold answer, in the task's own format


class Task(Protocol):
    name: str

    def problems(self, split: str) -> list[Problem]:
        """`pretrain` (tasks that train pi_ref here), `train` (post-training) or `test`."""
        ...

    def reward(self, problem: Problem, response: str) -> float:
        """Reward of a finished response (decoded without special tokens)."""
        ...

    def target(self, problem: Problem) -> str:
        """The reference response used for next-token pretraining."""
        ...

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """A tokenizer for models this framework builds from scratch."""
        ...
