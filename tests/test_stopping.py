"""The return model's stopping rule: stop once no position's validation accuracy improves, within a budget."""

import json

import pytest
import torch

from helpers import make_guide, quiet
from qsharp_exp.config import ConfigError, GuideTrainConfig, HardwareConfig
from qsharp_exp.hardware import Hardware
from qsharp_exp.training.collect import Rollout
from qsharp_exp.training.return_learning import train_return_model
from qsharp_exp.training.stopping import PlateauRule, StopReason, stop_record

RULE = PlateauRule(patience=3, min_delta=0.01)


def curve_of(*accuracies: dict, counts: int = 500) -> list[dict]:
    """A learning curve with a header record and one evaluation per dict of position -> accuracy."""
    return [{"kept_rollouts": 10, "steps": 100}] + [
        {"step": 10 * (i + 1), "val_acc_by_pos": acc, "val_count_by_pos": {p: counts for p in acc}}
        for i, acc in enumerate(accuracies)]


def test_a_curve_that_plateaus_stops_after_patience_evaluations_without_improvement():
    rising = [{0: 0.6, 1: 0.5 + 0.1 * i} for i in range(4)]
    flat = [{0: 0.6, 1: 0.8 + 0.002 * i} for i in range(3)]  # gains under min_delta
    assert not RULE.converged(curve_of(*rising, *flat[:2]))
    assert RULE.evaluations_without_improvement(curve_of(*rising, *flat)) == 3
    assert RULE.converged(curve_of(*rising, *flat))
    assert RULE.reason(curve_of(*rising, *flat)) == StopReason.converged


def test_a_curve_that_keeps_improving_does_not_stop_and_ends_on_its_budget():
    improving = curve_of(*[{0: 0.6, 1: 0.3 + 0.03 * i} for i in range(20)], counts=5000)
    assert RULE.evaluations_without_improvement(improving) == 0
    assert not RULE.converged(improving)
    assert RULE.reason(improving) == StopReason.budget


def test_one_position_starting_to_learn_while_the_others_are_flat_counts_as_improvement():
    # Star-graph learns backwards from the goal: the first choice (position 0) rises only after a long plateau.
    plateau = [{0: 0.7, 1: 0.99} for _ in range(2)]
    assert RULE.evaluations_without_improvement(curve_of(*plateau, {0: 0.75, 1: 0.99})) == 0
    # A position never seen before is an improvement too (longer responses reach it later).
    assert RULE.evaluations_without_improvement(curve_of(*plateau, {0: 0.7, 1: 0.99, 2: 0.5})) == 0


def test_a_position_whose_accuracy_swings_within_its_noise_does_not_hold_training_back():
    # Before pi_ref's own coin flip the value hovers near 0.5 and the accuracy swings (a run's position 0 on 324
    # examples); the learned position is flat. Only the first jump is beyond two standard errors.
    swinging = [0.45, 0.6, 0.5, 0.62, 0.55, 0.6, 0.58]
    curve = curve_of(*[{0: a, 1: 0.99} for a in swinging], counts=324)
    assert RULE.evaluations_without_improvement(curve) == 5 and RULE.converged(curve)
    # On 100 times the examples the rise to 0.62 is real: counted from there.
    assert RULE.evaluations_without_improvement(curve_of(*[{0: a, 1: 0.99} for a in swinging], counts=32_400)) == 3


def test_the_gain_that_counts_is_min_delta_or_the_noise_of_the_examples_whichever_is_larger():
    assert RULE.needed_gain(0.5, 1_000_000) == 0.01
    assert RULE.needed_gain(0.5, 100) == pytest.approx(2 * (0.25 / 100) ** 0.5)
    assert RULE.needed_gain(1.0, 10) == pytest.approx(2 * (0.1 / 10) ** 0.5)  # a perfect score on few is noisy
    assert RULE.needed_gain(0.5, None) == 0.01  # curves written without counts


def test_the_rule_reads_a_curve_after_a_json_round_trip_and_patience_zero_never_stops():
    curve = curve_of(*[{0: 0.6, 1: 0.9}] * 5)
    assert RULE.converged(json.loads(json.dumps(curve)))  # position keys become strings
    fixed = PlateauRule(patience=0, min_delta=0.01)
    assert not fixed.converged(curve) and fixed.reason(curve) == StopReason.fixed


def test_patience_needs_a_validation_split():
    with pytest.raises(ConfigError, match="val_fraction"):
        GuideTrainConfig(patience=3, val_fraction=0.0)
    with pytest.raises(ConfigError, match="patience"):
        GuideTrainConfig(patience=-1)


def learnable_rollouts() -> list[Rollout]:
    """Reward 1 iff the first response token is 5: learned in a few dozen steps."""
    return [Rollout(f"p{i // 2}", [7, 8, 9], [a, 6, 2], i % 2, float(a == 5))
            for i, a in enumerate([5, 9, 9, 5] * 16)]


def stopping_config(**overrides) -> GuideTrainConfig:
    settings = dict(steps=300, batch_size=8, lr=3e-3, eval_every=5, val_fraction=0.25, patience=2,
                    min_delta=0.01) | overrides
    return GuideTrainConfig(**settings)


def test_training_stops_once_learned_and_reports_why(tokenizer):
    hw = Hardware(HardwareConfig())
    trained = train_return_model(make_guide(tokenizer, head="v"), learnable_rollouts(), stopping_config(), 0, quiet(hw))
    record = stop_record(trained.curve)
    assert record["stopped"] == "converged" and record["budget_steps"] == 300
    assert record["trained_steps"] < 300 and record["trained_steps"] % 5 == 0
    assert trained.curve[-2]["step"] == record["trained_steps"] and trained.curve[-2]["val_acc"] == 1.0
    short = train_return_model(make_guide(tokenizer, head="v"), learnable_rollouts(), stopping_config(steps=5), 0,
                               quiet(hw))
    assert stop_record(short.curve) == {"stopped": "budget", "trained_steps": 5, "budget_steps": 5}
    fixed = train_return_model(make_guide(tokenizer, head="v"), learnable_rollouts(),
                               stopping_config(steps=12, patience=0), 0, quiet(hw))
    assert stop_record(fixed.curve) == {"stopped": "fixed", "trained_steps": 12, "budget_steps": 12}


@pytest.mark.parametrize("killed_before", ["the last checkpoint", "the stop"])
def test_a_resumed_run_stops_at_the_same_step_as_an_uninterrupted_one(tokenizer, tmp_path, monkeypatch,
                                                                      killed_before):
    import qsharp_exp.training.return_learning as training

    hw = Hardware(HardwareConfig())
    cfg = stopping_config(checkpoint_every=5)
    first = train_return_model(make_guide(tokenizer, head="v"), learnable_rollouts(), cfg, 0, quiet(hw))
    stopped_at = stop_record(first.curve)["trained_steps"]
    assert stopped_at >= 15
    # Killed while the step before the stop runs (resumes from the checkpoint 5 steps back and must stop where
    # the uninterrupted run did), or just after the checkpoint at the stop itself was written.
    kill_at = stopped_at - 1 if killed_before == "the last checkpoint" else stopped_at + 1
    real_loss, calls = training.sequence_mean_loss, {"n": 0}

    def killed(*args):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(training, "sequence_mean_loss", killed)
    if killed_before == "the stop":  # the run would have stopped already: make it go one step past
        monkeypatch.setattr(training.PlateauRule, "converged", lambda self, curve: False)
    with pytest.raises(KeyboardInterrupt):
        train_return_model(make_guide(tokenizer, head="v"), learnable_rollouts(), cfg, 0, quiet(hw), tmp_path)
    monkeypatch.undo()
    second = train_return_model(make_guide(tokenizer, head="v"), learnable_rollouts(), cfg, 0, quiet(hw), tmp_path)
    assert second.curve == first.curve
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
