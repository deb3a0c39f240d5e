"""Calibration metrics (ECE, Brier, reliability bins), temperature scaling, and the objective J_eta with the
paired comparison, each against a computation by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from qsharp_exp.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from qsharp_exp.metrics import objective, objective_per_problem, paired_difference


def test_reliability_bins_ece_and_brier_match_a_hand_computation():
    predicted = [0.05, 0.15, 0.12, 0.95, 1.0, 0.55]
    outcome = [0, 1, 0, 1, 1, 0]
    bins = reliability_bins(predicted, outcome)
    # bin 0: {0.05}; bin 1: {0.15, 0.12}; bin 5: {0.55}; bin 9: {0.95, 1.0} (1.0 falls in the last bin)
    assert [(b["bin"], b["count"]) for b in bins] == [(0, 1), (1, 2), (5, 1), (9, 2)]
    assert bins[1]["predicted"] == pytest.approx(0.135) and bins[1]["observed"] == pytest.approx(0.5)
    ece = (1 * 0.05 + 2 * abs(0.135 - 0.5) + 1 * 0.55 + 2 * abs(0.975 - 1.0)) / 6
    assert expected_calibration_error(predicted, outcome) == pytest.approx(ece)
    brier = (0.05**2 + 0.85**2 + 0.12**2 + 0.05**2 + 0.0 + 0.55**2) / 6
    assert brier_score(predicted, outcome) == pytest.approx(brier)
    summary = calibration_summary(predicted, outcome)
    assert summary["ece"] == pytest.approx(ece, abs=1e-5) and summary["examples"] == 6


def test_a_perfectly_calibrated_predictor_has_no_calibration_error():
    predicted = [0.25] * 4 + [0.75] * 4
    outcome = [1, 0, 0, 0, 1, 1, 1, 0]
    assert expected_calibration_error(predicted, outcome) == pytest.approx(0.0)


def test_temperature_scaling_recovers_the_temperature_that_made_the_logits_overconfident():
    torch.manual_seed(0)
    true_logits = torch.randn(20000) * 2
    labels = torch.bernoulli(torch.sigmoid(true_logits))
    overconfident = true_logits * 3.0  # a model 3x too sure of itself

    def loss(inverse: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(overconfident * inverse, labels)

    t = fit_temperature(loss)
    assert t == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(torch.sigmoid(overconfident).tolist(), labels.tolist())
    after = expected_calibration_error(torch.sigmoid(overconfident / t).tolist(), labels.tolist())
    assert after < before / 3


def _samples(rows):
    return [{"problem_id": pid, "correct": c, "kl": kl} for pid, c, kl in rows]


def test_objective_and_its_standard_error_match_a_hand_computation():
    samples = _samples([("a", 1.0, 0.2), ("a", 0.0, 0.4), ("b", 1.0, 1.0), ("b", 1.0, 0.0), ("c", 0.0, 0.6),
                        ("c", 0.0, 0.0)])
    eta = 0.1
    # per problem: reward mean - eta * KL mean
    by_hand = {"a": 0.5 - 0.1 * 0.3, "b": 1.0 - 0.1 * 0.5, "c": 0.0 - 0.1 * 0.3}
    assert objective_per_problem(samples, eta) == pytest.approx(by_hand)
    values = list(by_hand.values())
    mean = sum(values) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / 2 / 3)
    assert objective(samples, eta) == pytest.approx((mean, se))
    # pi_ref (no eta, KL 0): its reward; a policy with KL but no eta has no objective
    unguided = _samples([("a", 1.0, 0.0), ("b", 0.0, 0.0)])
    assert objective(unguided, None)[0] == pytest.approx(0.5)
    assert objective(samples, None) == (None, None)


def test_paired_difference_uses_the_problems_both_runs_hold():
    ours = {"a": 0.75, "b": 0.5, "c": 1.0, "d": 0.25}
    theirs = {"a": 0.5, "b": 0.5, "c": 0.25, "e": 1.0}
    diffs = [0.25, 0.0, 0.75]
    mean = sum(diffs) / 3
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2 / 3)
    assert paired_difference(ours, theirs) == pytest.approx((mean, se, 3))
    with pytest.raises(ValueError, match="share no test problem"):
        paired_difference({"x": 1.0}, {"y": 1.0})


def test_decisive_cuts_name_each_decision_its_wrong_candidates_and_where_they_start():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from arithmetic_decisive_tokens import decisive_cuts, summarise

    solution = "Tom starts with 12 apples. Giving 3 away leaves 12 - 3 = 9. When it doubles: 9 * 2 = 18."
    cuts = {(c.kind, solution[c.offset : c.offset + len(c.right)], c.wrong) for c in decisive_cuts(solution)}
    assert cuts == {("sign", " -", (" +",)), ("result", "9", ("0", "8")), ("carry", "9", ("1",)),
                    ("multiplier", "2", ("3",)), ("result", "1", ("2", "0"))}
    rows = [{"problem": "p", "kind": "sign", "candidate": t, "text": "x" + t, "value": v, "mc_rate": m}
            for t, v, m in ((" -", 0.8, 0.9), (" +", 0.1, 0.0))]
    summary = summarise(rows)["sign"]
    assert summary["ranked_right"] == 1.0 and summary["abs_error"] == pytest.approx(0.1)
    assert summary["value_wrong"] == pytest.approx(0.1) and summary["mc_right"] == pytest.approx(0.9)
