"""Guidance rules and the formulas behind them (docs/method.md, sections 1-2), as pure functions.

A rule turns the return model's outputs for pi_ref's top-k candidates into log-multipliers (offsets)
added to pi_ref's log-probabilities: pi(y|x) ∝ pi_ref(y|x) * exp(offset). Rules are registered by
name with `@register_guidance`; `algo=<name>` picks one, and the algo list, the report's labels, the
benchmark and the reproduction script read the registry. A new rule is one function here plus one
`conf/algo/<name>.yaml`.

Offsets are computed in float32 from logits (never from saturated probabilities). eta is the KL
weight: larger eta = closer to pi_ref.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from qsharp_exp.config import NonCandidates
from qsharp_exp.registry import Registry


def bernoulli_qsharp_offset(logit: torch.Tensor, eta: float) -> torch.Tensor:
    """ln((1-p) + p e^(1/eta)) with p = sigmoid(logit).

    For 1/eta > 1 as softplus(l + 1/eta) - softplus(l); for small 1/eta that difference cancels, so
    there as 1/eta + log1p(-(1-p)(1-e^(-1/eta))), which is exact to float32 precision.
    """
    logit = logit.float()
    c = 1.0 / eta
    if c > 1.0:
        return F.softplus(logit + c) - F.softplus(logit)
    return c + torch.log1p(-torch.sigmoid(-logit) * -math.expm1(-c))


def histogram_qsharp_offset(atom_logits: torch.Tensor, atoms: torch.Tensor, eta: float) -> torch.Tensor:
    """ln E_q[exp(z/eta)] = logsumexp_a(ln q_a + z_a/eta) over the last dim."""
    log_q = torch.log_softmax(atom_logits.float(), dim=-1)
    return torch.logsumexp(log_q + atoms.float() / eta, dim=-1)


def two_point_qsharp_offset(mean_value: torch.Tensor, low: float, high: float, eta: float) -> torch.Tensor:
    """ln E[exp(Z/eta)] for Z on {low, high} with the given mean (the MSE ablation's Q# offset)."""
    p = ((mean_value.float() - low) / (high - low)).clamp(0.0, 1.0)
    log_q = torch.stack([torch.log1p(-p), torch.log(p)], dim=-1)
    atoms = torch.tensor([low, high], device=p.device) / eta
    return torch.logsumexp(log_q + atoms, dim=-1)


def bernoulli_mean(logit: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logit.float())


def histogram_mean(atom_logits: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    return (torch.softmax(atom_logits.float(), dim=-1) * atoms.float()).sum(-1)


def cd_offset(mean_value: torch.Tensor, eta: float) -> torch.Tensor:
    """Controlled decoding: pi ∝ pi_ref * exp(E[Z]/eta), the unregularised pi_ref value."""
    return mean_value.float() / eta


def sampler_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """pi_ref as the sampler sees it: temperature, then top-p (nucleus), renormalised; -inf outside."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return logp
    sorted_logp, order = torch.sort(logp, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_logp.exp(), dim=-1) - sorted_logp.exp()
    drop_sorted = mass_before >= top_p  # keep the smallest prefix whose mass reaches top_p
    drop_sorted[..., 0] = False  # and the most likely token always (rounding gives it mass_before > 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)


def guided_logprobs(
    ref_logp: torch.Tensor, candidates: torch.Tensor, offsets: torch.Tensor, mask_non_candidates: bool
) -> torch.Tensor:
    """log pi_guided: pi_ref times exp(offset) on the candidates, renormalised.

    Tokens outside `candidates` keep multiplier 1, or are masked out when `mask_non_candidates`.
    """
    base = torch.full_like(ref_logp, float("-inf")) if mask_non_candidates else ref_logp
    cand_logp = ref_logp.gather(-1, candidates) + offsets.float()
    return torch.log_softmax(base.scatter(-1, candidates, cand_logp), dim=-1)


def kl_divergence(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi || pi_ref) over the last dim; tokens pi gives zero mass contribute nothing."""
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - ref_logp), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)


def paper_compat_logprobs(
    logits: torch.Tensor, temperature: float, top_p: float, candidates: torch.Tensor | None,
    offsets: torch.Tensor | None, mask_non_candidates: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The published code's decoding step: (log pi_sampled, log pi_ref used for its KL).

    The offset is added to the raw logits of the candidates (so the temperature divides it too), top-p
    is applied after guidance, and KL is measured against pi_ref at the temperature but without top-p;
    so even unguided sampling shows KL > 0 when top_p < 1. Kept only to compare with the paper's numbers.
    """
    logits = logits.float()
    guided = logits
    if candidates is not None:
        base = torch.full_like(logits, float("-inf")) if mask_non_candidates else logits
        guided = base.scatter(-1, candidates, logits.gather(-1, candidates) + offsets.float())
    return sampler_logprobs(guided, temperature, top_p), torch.log_softmax(logits / temperature, dim=-1)


# -- the rules -----------------------------------------------------------------------------------


class ReturnDistributionLike(Protocol):
    """What a rule may ask of the return model's distribution head (models/distributions.py)."""

    def mean(self, out: torch.Tensor) -> torch.Tensor: ...

    def log_mean_exp(self, out: torch.Tensor, eta: float) -> torch.Tensor: ...


class ReturnModelLike(Protocol):
    """What guidance reads of a return model (models/return_model.ReturnModel, which imports this module)."""

    distribution: ReturnDistributionLike


OffsetFn = Callable[[ReturnDistributionLike, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class GuidanceRule:
    name: str
    label: str  # how reports and plots name it
    offset: OffsetFn  # (return distribution, head outputs [..., D], eta) -> offsets [...]


RULES: Registry[GuidanceRule] = Registry("guidance rule", "algo.name")


def register_guidance(name: str, label: str | None = None) -> Callable[[OffsetFn], OffsetFn]:
    """Register `offset(distribution, outputs, eta)` as the guidance rule `algo=name`."""

    def register(offset: OffsetFn) -> OffsetFn:
        RULES.add(name, GuidanceRule(name, label or name, offset))
        return offset

    return register


@register_guidance("cd", label="CD")
def cd(distribution: ReturnDistributionLike, out: torch.Tensor, eta: float) -> torch.Tensor:
    """Controlled decoding: pi ∝ pi_ref * exp(E[Z]/eta), the unregularised pi_ref value."""
    return cd_offset(distribution.mean(out), eta)


@register_guidance("qsharp", label="Q#")
def qsharp(distribution: ReturnDistributionLike, out: torch.Tensor, eta: float) -> torch.Tensor:
    """Q#: pi ∝ pi_ref * E[exp(Z/eta)], the KL-regularised optimum for pi_ref's return Z."""
    return distribution.log_mean_exp(out, eta)


@dataclass(frozen=True)
class GuidanceSettings:
    """How a return model guides, as settings name it: the rule (`algo.name` or a processor's `rule`: qsharp, cd),
    the KL weight eta, how many of pi_ref's most likely tokens are scored, and what the other tokens get (keep:
    multiplier 1; mask: left out)."""

    rule: str = "qsharp"
    eta: float = 0.1
    top_k: int = 20
    non_candidates: str | NonCandidates = "keep"


@dataclass(frozen=True)
class Guidance:
    """A return model guiding pi_ref by `rule` at KL weight `eta`, on pi_ref's `top_k` candidates; the
    other tokens keep multiplier 1, or are masked out with `mask_non_candidates`."""

    model: ReturnModelLike
    rule: GuidanceRule
    eta: float
    top_k: int
    mask_non_candidates: bool = False

    @classmethod
    def from_settings(cls, model: ReturnModelLike, settings: GuidanceSettings) -> Guidance:
        """The one conversion from settings (names and choices) to guidance (a rule and numbers)."""
        return cls(model, RULES[settings.rule], settings.eta, settings.top_k,
                   NonCandidates(settings.non_candidates) is NonCandidates.mask)

    def offsets(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.rule.offset(self.model.distribution, outputs, self.eta)
