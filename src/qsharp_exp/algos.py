"""What kind of algorithm `algo.name` names: pi_ref itself, a guidance rule of pi_ref (guidance.RULES: Q#, CD)
or a policy trainer that fine-tunes a copy of it (training/policy.TRAINERS: REINFORCE, DPO, RPO). The one
place that asks the registries; the config checks, the stages and the pipeline ask here."""

from __future__ import annotations

from enum import Enum

from qsharp_exp.config import ConfigError
from qsharp_exp.guidance import RULES
from qsharp_exp.training.policy import TRAINERS

REFERENCE = "pi_ref"


class AlgoKind(Enum):
    reference = "reference"  # sample pi_ref as it is
    guidance = "guidance"  # pi_ref guided by a return model
    policy = "policy"  # a fine-tuned copy of pi_ref samples instead


def algo_names() -> tuple[str, ...]:
    """Every value algo.name can take: pi_ref, the guidance rules and the policy trainers."""
    return (REFERENCE, *RULES, *TRAINERS)


def algo_kind(name: str) -> AlgoKind:
    if name == REFERENCE:
        return AlgoKind.reference
    if name in RULES:
        return AlgoKind.guidance
    if name in TRAINERS:
        return AlgoKind.policy
    raise ConfigError(f"algo.name={name!r} is not supported: use one of {', '.join(algo_names())}.")
