"""What every task provides to the shared pipeline; everything else is task-independent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerFast


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # the user's message (math tasks put it in the chat template) or the text pi_ref continues
    answer: str  # the gold answer, in the task's own format


class Task(Protocol):
    name: str

    def problems(self, split: str) -> list[Problem]:
        """`pretrain` (for a pi_ref trained here), `train` (post-training) or `test`."""
        ...

    def answer_of(self, response: str) -> str | None:
        """The final answer a response gives (None: it gives none), for majority votes and samples.jsonl."""
        ...

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers are the same answer (majority votes group by this)."""
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
