"""Return-model losses, heads and save/load."""

import math

import pytest
import torch

from helpers import make_guide, quiet
from qsharp_exp.config import GuideConfig, GuideTrainConfig, HardwareConfig
from qsharp_exp.guidance import RULES
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.distributions import return_distribution
from qsharp_exp.models.heads import HEADS
from qsharp_exp.models.return_model import Examples, ReturnModel
from qsharp_exp.training.collect import Rollout
from qsharp_exp.training.return_learning import (
    NoSignalError,
    drop_constant_problems,
    labelled,
    sequence_mean_loss,
    train_return_model,
)


def test_bernoulli_loss_is_binary_cross_entropy():
    dist = return_distribution(GuideConfig(distribution="bernoulli"))
    logit = torch.tensor([[0.3], [-1.2]])
    loss = dist.loss(logit, torch.tensor([1.0, 0.0]))
    p = torch.sigmoid(torch.tensor([0.3, -1.2]))
    expected = [-math.log(p[0].item()), -math.log(1 - p[1].item())]
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_mse_ablation_is_squared_error_on_a_mean_clamped_to_the_return_range():
    dist = return_distribution(GuideConfig(distribution="mse"))
    out = torch.tensor([[0.3], [1.4]])
    torch.testing.assert_close(dist.loss(out, torch.tensor([1.0, 0.0])), torch.tensor([0.49, 1.96]))
    torch.testing.assert_close(dist.mean(out), torch.tensor([0.3, 1.0]))
    torch.testing.assert_close(RULES["cd"].offset(dist, out, 0.5), torch.tensor([0.6, 2.0]))
    expected = torch.log(torch.tensor([0.7 + 0.3 * math.exp(2.0), math.exp(2.0)]))
    torch.testing.assert_close(RULES["qsharp"].offset(dist, out, 0.5), expected)


def test_histogram_labels_are_projected_with_their_real_value_and_clamped():
    dist = return_distribution(GuideConfig(distribution="histogram", num_atoms=5, v_min=-1.0, v_max=1.0))
    target = dist.project(torch.tensor([-1.0, 0.25, 1.0, 3.0, -7.0]))
    torch.testing.assert_close(target[0], torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(target[1], torch.tensor([0, 0, 0.5, 0.5, 0]))  # atoms -1,-.5,0,.5,1
    torch.testing.assert_close(target[2], torch.tensor([0, 0, 0, 0, 1.0]))
    torch.testing.assert_close(target[3], target[2])
    torch.testing.assert_close(target[4], target[0])
    # The projection keeps the mean, so the histogram's mean is the label's (clamped) value.
    atoms = torch.linspace(-1, 1, 5)
    torch.testing.assert_close((target * atoms).sum(-1), torch.tensor([-1.0, 0.25, 1.0, 1.0, -1.0]))


def test_histogram_loss_is_negative_log_likelihood_of_projected_label():
    dist = return_distribution(GuideConfig(distribution="histogram", num_atoms=3, v_min=0.0, v_max=1.0))
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    loss = dist.loss(logits, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(-torch.log_softmax(logits, -1)[0, 2].item())


def test_sequence_mean_loss_averages_within_each_sequence_first():
    per_example = torch.tensor([1.0, 3.0, 10.0])
    rows = torch.tensor([0, 0, 1])
    assert sequence_mean_loss(per_example, rows, 2).item() == pytest.approx((2.0 + 10.0) / 2)


def rollout(pid, reward, switch=0, response=(5, 6, 2)):
    return Rollout(pid, [7, 8, 9], list(response), switch, reward)


def test_examples_are_the_positions_from_the_switch_on_read_at_the_right_place(tokenizer):
    q_model = make_guide(tokenizer, head="q")
    batch = [rollout("a", 1.0, switch=1), rollout("b", 0.0, switch=0, response=(5, 2))]
    examples, out, returns = labelled(q_model, batch, tokenizer.pad_token_id, Hardware(HardwareConfig()))
    assert examples.rows.tolist() == [0, 0, 1, 1] and examples.steps.tolist() == [1, 2, 0, 1]
    assert examples.actions.tolist() == [6, 2, 5, 2]
    assert examples.cols.tolist() == [3, 4, 2, 3]  # Q-type: the output just before the action
    assert returns.tolist() == [1.0, 1.0, 0.0, 0.0]
    with torch.no_grad():
        every = q_model(examples.ids, examples.mask)  # [B, T, V, 1]
    torch.testing.assert_close(out.detach(), every[examples.rows, examples.cols, examples.actions])
    v_examples = Examples.of(HEADS["v"], [(r.prompt, r.response, r.switch) for r in batch], tokenizer.pad_token_id)
    assert v_examples.cols.tolist() == [4, 5, 3, 4]  # V-type: the output at the action itself


def test_problems_whose_samples_all_agree_are_dropped_and_none_left_is_a_clear_error(tokenizer):
    rollouts = [rollout("a", 1.0), rollout("a", 0.0), rollout("b", 1.0), rollout("b", 1.0)]
    assert {r.problem_id for r in drop_constant_problems(rollouts)} == {"a"}
    with pytest.raises(NoSignalError, match="samples_per_problem"):
        train_return_model(make_guide(tokenizer), [rollout("b", 1.0)] * 3, GuideTrainConfig(steps=1),
                           tokenizer.pad_token_id, quiet())


def test_return_model_learns_a_deterministic_label_and_survives_save_and_load(tokenizer, tmp_path):
    # Reward 1 iff the first response token is 5: learnable at the first position.
    rollouts = [rollout(f"p{i // 2}", float(a == 5), 0, (a, 6, 2)) for i, a in enumerate([5, 9] * 32)]
    model = make_guide(tokenizer, head="q")
    with torch.no_grad():
        model.head.weight.normal_(0, 0.02)
    cfg = GuideTrainConfig(steps=60, batch_size=16, lr=3e-3, eval_every=60, val_fraction=0.25)
    trained = train_return_model(model, rollouts, cfg, tokenizer.pad_token_id, quiet())
    model, curve = trained.model, trained.curve
    assert curve[-2]["val_acc"] == 1.0 and curve[-1] == {"stopped": "fixed", "trained_steps": 60, "budget_steps": 60}
    model.save_pretrained(tmp_path / "guide")
    loaded = ReturnModel.from_pretrained(tmp_path / "guide").eval()
    assert loaded.cfg == model.cfg
    ids = torch.tensor([[7, 8, 9, 5, 6]])
    torch.testing.assert_close(loaded(ids, torch.ones_like(ids)), model.eval()(ids, torch.ones_like(ids)))


def test_training_killed_after_a_checkpoint_resumes_to_the_same_weights(tokenizer, tmp_path, monkeypatch):
    import qsharp_exp.training.return_learning as training

    rollouts = [rollout(f"p{i // 2}", float(a == 5), i % 2, (a, 6, 2)) for i, a in enumerate([5, 9, 9, 5] * 16)]
    cfg = GuideTrainConfig(steps=20, batch_size=8, lr=3e-3, eval_every=10, val_fraction=0.25, checkpoint_every=6)
    hw = Hardware(HardwareConfig())
    first = train_return_model(make_guide(tokenizer, head="v"), rollouts, cfg, 0, quiet(hw))
    uninterrupted, curve = first.model, first.curve
    real_loss, calls = training.sequence_mean_loss, {"n": 0}

    def killed_at_step_15(*args):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(training, "sequence_mean_loss", killed_at_step_15)
    with pytest.raises(KeyboardInterrupt):
        train_return_model(make_guide(tokenizer, head="v"), rollouts, cfg, 0, quiet(hw), tmp_path)
    assert (tmp_path / "latest").read_text() == "global_step_12"
    calls["n"] = -100
    second = train_return_model(make_guide(tokenizer, head="v"), rollouts, cfg, 0, quiet(hw), tmp_path)
    resumed, resumed_curve = second.model, second.curve
    assert calls["n"] == -100 + 8  # steps 13..20 only
    assert resumed_curve == curve
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_length_grouped_batches_visit_every_sequence_once_per_epoch_with_similar_lengths():
    from qsharp_exp.training.return_learning import length_grouped_batches

    lengths = [2 + i % 17 for i in range(40)]
    epoch = length_grouped_batches(lengths, 4, seed=0, epoch=0)
    assert sorted(i for batch in epoch for i in batch) == list(range(40))
    assert epoch == length_grouped_batches(lengths, 4, seed=0, epoch=0)
    assert epoch != length_grouped_batches(lengths, 4, seed=0, epoch=1)
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch]
    assert max(spread) <= 3  # sorted within the megabatch: neighbours in length share a batch


def test_length_chunks_keep_padding_under_the_bound_and_cover_every_rollout():
    from qsharp_exp.training.return_learning import length_chunks

    lengths = [36, 120, 40, 128, 64, 70, 37, 90, 91, 100]
    chunks = length_chunks(lengths, 0.1)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for c in chunks:
        assert 1 - sum(lengths[i] for i in c) / (len(c) * max(lengths[i] for i in c)) <= 0.1
    assert len(length_chunks(lengths, 1.0)) == 1


@pytest.mark.parametrize("head", ["q", "v"])
def test_batch_loss_in_length_chunks_equals_the_loss_of_one_padded_batch(tokenizer, head):
    from qsharp_exp.training.return_learning import batch_loss

    model = make_guide(tokenizer, head=head)
    batch = [rollout(f"p{i % 3}", float(i % 2), i % 2, tuple(3 + j % 6 for j in range(2 + 7 * i))) for i in range(8)]
    hw = Hardware(HardwareConfig())
    whole = batch_loss(model, batch, tokenizer.pad_token_id, hw, max_padding=1.0)
    chunked = batch_loss(model, batch, tokenizer.pad_token_id, hw, max_padding=0.1)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_an_epoch_budget_gives_twice_the_data_twice_the_steps_and_a_warm_up_share(tokenizer, monkeypatch):
    import qsharp_exp.training.return_learning as training

    warmups = []
    real = training.make_trainer
    monkeypatch.setattr(training, "make_trainer", lambda model, hw, plan, **kw: (
        warmups.append((plan.warmup_steps, plan.total_steps)) or real(model, hw, plan, **kw)))
    round1 = [rollout(f"p{i // 2}", float(i % 2), 0) for i in range(40)]
    round2 = round1 + [rollout(f"q{i // 2}", float(i % 2), 0) for i in range(40)]  # rounds 1 + 2 aggregated
    cfg = GuideTrainConfig(epochs=2, steps=999, batch_size=4, eval_every=1000, val_fraction=0.1,
                           warmup_steps=1, warmup_fraction=0.5)
    steps = []
    for data in (round1, round2):
        curve = train_return_model(make_guide(tokenizer, head="v"), data, cfg, tokenizer.pad_token_id,
                                   quiet()).curve
        steps.append(curve[0]["steps"])
    # 18 (then 36) training problems of 2 rollouts, 2 problems per batch, 2 epochs; `steps` is not used.
    assert steps == [18, 36]
    assert warmups == [(9, 18), (18, 36)]  # half of the steps, above warmup_steps=1


def test_val_fraction_zero_holds_out_no_problem_and_the_curve_has_training_loss_only(tokenizer):
    from qsharp_exp.training.return_learning import BatchPlan

    data = [rollout(f"p{i // 2}", float(i % 2), 0) for i in range(40)]  # 20 problems with mixed rewards
    none = BatchPlan.make(data, GuideTrainConfig(val_fraction=0.0, batch_size=4), 1, 0)
    some = BatchPlan.make(data, GuideTrainConfig(val_fraction=0.05, batch_size=4), 1, 0)
    assert none.val == [] and len(none.groups) == 20
    assert len({r.problem_id for r in some.val}) == 1 and len(some.groups) == 19
    cfg = GuideTrainConfig(steps=4, batch_size=4, eval_every=2, val_fraction=0.0)
    curve = train_return_model(make_guide(tokenizer, head="v"), data, cfg, tokenizer.pad_token_id,
                               quiet()).curve
    assert [sorted(p) for p in curve if "step" in p] == [["step", "train_loss"]] * 2


def test_calibration_fits_a_temperature_that_lowers_the_validation_loss_and_travels_with_the_model(tokenizer,
                                                                                                  tmp_path):
    """Labels that are 1 for token 5 only 70% of the time: a model trained hard on them is overconfident;
    the fitted temperature makes its held-out loss no worse, divides the head's outputs, and is saved."""
    import random

    rng = random.Random(0)
    rollouts = [rollout(f"p{i // 4}", float(a == 5 and rng.random() < 0.7 or a == 9 and rng.random() < 0.1), 0,
                        (a, 6, 2)) for i, a in enumerate([5, 9] * 64)]
    hw = Hardware(HardwareConfig())
    cfg = GuideTrainConfig(steps=80, batch_size=16, lr=1e-2, eval_every=80, val_fraction=0.5, calibrate=True)
    trained = train_return_model(make_guide(tokenizer, head="v"), rollouts, cfg, tokenizer.pad_token_id,
                                 quiet(hw))
    calibration = trained.calibration
    assert calibration["temperature"] == pytest.approx(calibration["fitted_temperature"]) != 1.0
    assert trained.model.temperature.item() == pytest.approx(calibration["temperature"], abs=1e-5)  # kept to 5 places
    assert calibration["after"]["examples"] == calibration["before"]["examples"] > 0
    ids = torch.tensor([[7, 8, 9, 5, 6]])
    scaled = trained.model.eval()(ids, torch.ones_like(ids))
    trained.model.save_pretrained(tmp_path / "guide")
    loaded = ReturnModel.from_pretrained(tmp_path / "guide").eval()
    torch.testing.assert_close(loaded(ids, torch.ones_like(ids)), scaled)
    with torch.no_grad():
        trained.model.temperature.fill_(1.0)
    torch.testing.assert_close(trained.model(ids, torch.ones_like(ids)), scaled * calibration["temperature"])
    # Without the setting nothing is fitted, and the figures before it are still measured.
    plain = train_return_model(make_guide(tokenizer, head="v"), rollouts, GuideTrainConfig(
        steps=10, batch_size=16, eval_every=10, val_fraction=0.5), tokenizer.pad_token_id, quiet(hw))
    assert set(plain.calibration) == {"before", "temperature"} and plain.calibration["temperature"] == 1.0


def test_a_return_model_saved_before_temperature_scaling_loads_with_temperature_one(tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_guide(tokenizer, head="v")
    model.save_pretrained(tmp_path / "old")
    weights = load_file(tmp_path / "old" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "temperature"}, tmp_path / "old" / "model.safetensors")
    assert ReturnModel.from_pretrained(tmp_path / "old").temperature.item() == 1.0
