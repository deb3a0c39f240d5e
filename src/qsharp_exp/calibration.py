"""How far a return model's values are from the success rates they claim (docs/math.md, calibration), and
temperature scaling, the standard fix: one scalar T fitted on held-out examples so that the head's outputs
divided by T fit their returns best. Pure functions of predictions and outcomes, tested by hand computation.

Why it matters here: Q# maximises reward - eta * KL only when its values are right. A wrong token valued 0.26
where pi_ref succeeds after it 7% of the time keeps a quarter of its weight under Q#, while CD's exp(value/eta)
hides the same error by over-committing; calibration closes that gap for Q#.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

BINS = 10


def reliability_bins(predicted: Sequence[float], outcome: Sequence[float], bins: int = BINS
                     ) -> list[dict[str, float]]:
    """Equal-width bins of the predicted value over [0, 1]: each non-empty bin's count, mean prediction and
    mean outcome (the points of a reliability diagram). A prediction of exactly 1 falls in the last bin."""
    sums: list[list[float]] = [[0, 0.0, 0.0] for _ in range(bins)]
    for p, y in zip(predicted, outcome, strict=True):
        b = sums[min(int(p * bins), bins - 1)]
        b[0] += 1
        b[1] += p
        b[2] += y
    return [{"bin": i, "count": n, "predicted": sp / n, "observed": sy / n}
            for i, (n, sp, sy) in enumerate(sums) if n]


def expected_calibration_error(predicted: Sequence[float], outcome: Sequence[float], bins: int = BINS) -> float:
    """ECE: the count-weighted mean over bins of |mean prediction - mean outcome|."""
    total = len(predicted)
    return sum(b["count"] / total * abs(b["predicted"] - b["observed"])
               for b in reliability_bins(predicted, outcome, bins))


def brier_score(predicted: Sequence[float], outcome: Sequence[float]) -> float:
    """Mean squared difference between the predicted value and the outcome."""
    return sum((p - y) ** 2 for p, y in zip(predicted, outcome, strict=True)) / len(predicted)


def calibration_summary(predicted: Sequence[float], outcome: Sequence[float]) -> dict:
    return {"ece": round(expected_calibration_error(predicted, outcome), 5),
            "brier": round(brier_score(predicted, outcome), 5), "examples": len(predicted),
            "bins": [{k: round(v, 5) if isinstance(v, float) else v for k, v in b.items()}
                     for b in reliability_bins(predicted, outcome)]}


def fit_temperature(loss: Callable[[torch.Tensor], torch.Tensor], low: float = 0.05, high: float = 20.0,
                    iterations: int = 60) -> float:
    """The T in [low, high] minimising `loss(1 / T)` (the mean held-out loss of the outputs scaled by 1 / T),
    by golden-section search on ln T: the loss of a scaled logit is unimodal in the scale."""
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return float(loss(torch.tensor(math.exp(-log_t))))

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2)


def plot_reliability(summaries: dict[str, dict], path: Path, title: str) -> None:
    """A reliability diagram: observed success rate against predicted value per bin, one line per summary
    (e.g. before and after temperature scaling), with the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated")
    for label, summary in summaries.items():
        bins = summary["bins"]
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                label=f"{label} (ECE {summary['ece']:.3f}, Brier {summary['brier']:.3f})")
    ax.set_xlabel("predicted value")
    ax.set_ylabel("observed success rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
