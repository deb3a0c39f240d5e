"""What every task provides to the shared pipeline, and the registry of tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from transformers import PreTrainedTokenizerFast

from qsharp_exp.config import TaskConfig
from qsharp_exp.registry import Registry


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # the user's message (math tasks put it in the chat template) or the text pi_ref continues
    answer: str  # the gold answer, in the task's own format


class Task(Protocol):
    name: str
    # The headline column of reports: "pass@1" (with maj1@k beside it), or "accuracy" where the paper
    # reports one number per run (star-graph). Both are the mean reward of single samples.
    reward_metric: str

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

    def describe(self) -> dict[str, Any]:
        """Fields of the run's metrics.json that say which variant of the task ran (e.g. the graph shape)."""
        ...


@dataclass(frozen=True)
class TaskSpec:
    name: str
    config: type[TaskConfig]  # the schema of the task's config section
    build: Callable[[Any], Task]  # config -> task


TASKS: Registry[TaskSpec] = Registry("task", "task.name")


def register_task(name: str, config: type[TaskConfig]) -> Callable:
    """Register `build(cfg) -> Task` (a class or a function) as `task=name`, with its config schema."""

    def register(build: Callable) -> Callable:
        TASKS.add(name, TaskSpec(name, config, build))
        return build

    return register
