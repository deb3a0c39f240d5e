"""Stages added after a run's evaluation (`extra_stages=[name, ...]`): a measurement on the samples, a second
scorer, a calibration check on other data. Each is one function registered by name with `@register_stage`; it
gets the run's context and what the built-in stages produced, builds what it needs through `ctx.stage` (so it is
cached by its inputs like every other stage), and returns the metrics that join the run's metrics.json as
`<name>_<metric>`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qsharp_exp.registry import Registry
from qsharp_exp.stages.base_model import BaseModel
from qsharp_exp.stages.cache import StageResult
from qsharp_exp.stages.context import RunContext
from qsharp_exp.stages.pi_ref import PiRef


@dataclass(frozen=True)
class Built:
    """What the built-in stages of a run produced: the base model (if one was pretrained), pi_ref, the return
    models of each round, the fine-tuned policy (policy baselines) and the evaluation (its samples.jsonl and
    metrics.json)."""

    base: BaseModel | None
    pi_ref: PiRef
    return_models: list[StageResult]
    policy: StageResult | None
    evaluation: StageResult


ExtraStage = Callable[[RunContext, Built], dict[str, float]]
EXTRA_STAGES: Registry[ExtraStage] = Registry("stage", "extra_stages")


def register_stage(name: str) -> Callable[[ExtraStage], ExtraStage]:
    return EXTRA_STAGES.register(name)


def check_registered(names: list[str]) -> None:
    """Every name in `extra_stages` is registered (a ConfigError naming the registered ones, before any work)."""
    for name in names:
        EXTRA_STAGES[name]


def run_extra_stages(ctx: RunContext, built: Built) -> dict[str, float]:
    """The metrics of the `extra_stages`, each under its stage's name."""
    metrics: dict[str, float] = {}
    for name in ctx.cfg.extra_stages:
        metrics.update({f"{name}_{key}": value for key, value in EXTRA_STAGES[name](ctx, built).items()})
    return metrics
