"""The return distribution's parameterisations (docs/method.md, section 2): what the return model's head
outputs mean. Each kind has its training loss, its mean E[Z] (what CD uses) and its ln E[exp(Z/eta)] (the Q#
offset), computed in float32 by the pure formulas of guidance.py. `model.guide.distribution` picks one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qsharp_exp import guidance
from qsharp_exp.config import Distribution, GuideConfig


class ReturnDistribution:
    """A distribution over the return in [v_min, v_max], parameterised by `size` head outputs per position."""

    size = 1

    def __init__(self, cfg: GuideConfig) -> None:
        self.v_min, self.v_max = cfg.v_min, cfg.v_max

    def loss(self, out: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        """Per-example loss of head outputs `out` [..., size] against observed returns [...]."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[Z] [...]."""
        raise NotImplementedError

    def log_mean_exp(self, out: torch.Tensor, eta: float) -> torch.Tensor:
        """ln E[exp(Z/eta)] [...]: the Q# offset."""
        raise NotImplementedError

    def predicts_success(self, out: torch.Tensor) -> torch.Tensor:
        return self.mean(out) > (self.v_min + self.v_max) / 2


class Bernoulli(ReturnDistribution):
    """Z in {0, 1} with P(Z = 1) = sigmoid(logit): one logit, trained with binary cross-entropy."""

    def loss(self, out: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out.squeeze(-1).float(), returns.float(), reduction="none")

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return guidance.bernoulli_mean(out.squeeze(-1))

    def log_mean_exp(self, out: torch.Tensor, eta: float) -> torch.Tensor:
        return guidance.bernoulli_qsharp_offset(out.squeeze(-1), eta)


class MeanOnly(ReturnDistribution):
    """The MSE ablation: a point estimate of E[Z], trained with squared error. Knowing only the mean, its Q#
    offset reads it as the two-point distribution on {v_min, v_max} with that mean (for 0/1 rewards: the
    Bernoulli with p = the mean)."""

    def loss(self, out: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        return (out.squeeze(-1).float() - returns.float()) ** 2

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out.squeeze(-1).float().clamp(self.v_min, self.v_max)

    def log_mean_exp(self, out: torch.Tensor, eta: float) -> torch.Tensor:
        return guidance.two_point_qsharp_offset(self.mean(out), self.v_min, self.v_max, eta)


class Histogram(ReturnDistribution):
    """A categorical over `num_atoms` evenly spaced returns in [v_min, v_max], trained by maximum likelihood of
    each return projected onto the atoms (C51)."""

    def __init__(self, cfg: GuideConfig) -> None:
        super().__init__(cfg)
        self.size = cfg.num_atoms
        self.atoms = torch.linspace(cfg.v_min, cfg.v_max, self.size)

    def project(self, returns: torch.Tensor) -> torch.Tensor:
        """C51 projection of a point mass at each return onto the atoms (clamped to [v_min, v_max])."""
        pos = (returns.float().clamp(self.v_min, self.v_max) - self.v_min) / (self.v_max - self.v_min)
        pos = pos * (self.size - 1)
        low = pos.floor().long().clamp(max=self.size - 2)
        frac = pos - low.float()
        target = torch.zeros(*returns.shape, self.size, device=returns.device)
        target.scatter_(-1, low.unsqueeze(-1), (1 - frac).unsqueeze(-1))
        target.scatter_add_(-1, (low + 1).unsqueeze(-1), frac.unsqueeze(-1))
        return target

    def loss(self, out: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        return -(self.project(returns) * torch.log_softmax(out.float(), dim=-1)).sum(-1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return guidance.histogram_mean(out, self.atoms.to(out.device))

    def log_mean_exp(self, out: torch.Tensor, eta: float) -> torch.Tensor:
        return guidance.histogram_qsharp_offset(out, self.atoms.to(out.device), eta)


KINDS: dict[Distribution, type[ReturnDistribution]] = {
    Distribution.bernoulli: Bernoulli, Distribution.mse: MeanOnly, Distribution.histogram: Histogram,
}


def return_distribution(cfg: GuideConfig) -> ReturnDistribution:
    """The distribution that `cfg.distribution` names."""
    return KINDS[Distribution(cfg.distribution)](cfg)
