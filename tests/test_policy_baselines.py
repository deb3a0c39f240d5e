"""REINFORCE, DPO and RPO: losses by hand, the reward shaping, the sign of DPO's implicit reward, the CLI."""

import copy
import math
from pathlib import Path

import pytest
import torch

from helpers import codec, stops
from qsharp_exp import guidance as G
from qsharp_exp.config import HardwareConfig, PolicyConfig
from qsharp_exp.hardware import Hardware
from qsharp_exp.padding import left_pad
from qsharp_exp.sampling import PromptBatch, SamplingSpec, Steering, generate
from qsharp_exp.training.policy import (
    PairLogprobs,
    dpo_loss,
    dpo_margin,
    reinforce_loss,
    rpo_loss,
    sequence_logprobs,
    shaped_rewards,
)
from test_cli import cli

HW = Hardware(HardwareConfig())


def test_reinforce_rewards_are_shaped_and_the_batch_mean_is_the_baseline():
    rewards = shaped_rewards(torch.tensor([True, False, False, True]), PolicyConfig())
    torch.testing.assert_close(rewards, torch.tensor([1.0, -0.1, -0.1, 1.0]))
    logp = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    loss = reinforce_loss(logp, rewards)
    advantage = [0.55, -0.55, -0.55, 0.55]  # rewards minus their mean 0.45
    assert loss.item() == pytest.approx(-sum(a * lp for a, lp in zip(advantage, [-1, -2, -3, -4], strict=True)) / 4)
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.tensor(advantage) / 4)  # correct paths pushed up


def test_dpo_and_rpo_losses_by_hand():
    lp = PairLogprobs(torch.tensor([-2.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0]))
    margin = 0.1 * ((-2 + 3) - (-5 + 4))  # 0.2
    assert dpo_margin(lp, 0.1).item() == pytest.approx(margin)
    assert dpo_loss(lp, 0.1).item() == pytest.approx(math.log1p(math.exp(-margin)))
    rpo = rpo_loss(lp, torch.tensor([4.0]), 0.1, nll_weight=1.0)
    assert rpo.item() == pytest.approx(math.log1p(math.exp(-margin)) + 2.0 / 4)


def test_a_dpo_step_raises_the_chosen_path_and_lowers_the_rejected_one(pi_ref, tokenizer):
    policy = copy.deepcopy(pi_ref).train()
    prompts, chosen, rejected = [[5, 6, 7]], [[8, 9, 2]], [[10, 11, 2]]
    with torch.no_grad():
        ref_c = sequence_logprobs(pi_ref, prompts, chosen, 0, HW)
        ref_r = sequence_logprobs(pi_ref, prompts, rejected, 0, HW)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    loss = dpo_loss(PairLogprobs(sequence_logprobs(policy, prompts, chosen, 0, HW),
                                 sequence_logprobs(policy, prompts, rejected, 0, HW), ref_c, ref_r), 0.1)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert sequence_logprobs(policy, prompts, chosen, 0, HW).item() > ref_c.item()
        assert sequence_logprobs(policy, prompts, rejected, 0, HW).item() < ref_r.item()


def test_sequence_logprobs_sum_the_response_tokens_only(pi_ref):
    prompt, response = [5, 6, 7], [8, 9]
    with torch.no_grad():
        logits = pi_ref(input_ids=torch.tensor([prompt + response])).logits[0]
        expected = sum(torch.log_softmax(logits[len(prompt) - 1 + i], -1)[t].item() for i, t in enumerate(response))
        got = sequence_logprobs(pi_ref, [prompt, [5]], [response, [9, 9, 9]], 0, HW)[0].item()
    assert got == pytest.approx(expected, abs=1e-5)


def test_sampling_from_an_unchanged_copy_of_pi_ref_has_zero_kl(pi_ref, tokenizer, tiny_task):
    rows = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in tiny_task.problems("test")[:4]]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    gen = generate(pi_ref, PromptBatch(ids, mask, stops(tokenizer)), SamplingSpec(top_p=0.9, max_new_tokens=6),
                   torch.Generator().manual_seed(0), Steering(policy=copy.deepcopy(pi_ref)))
    assert gen.kl.abs().max().item() == 0.0
    assert codec(tokenizer, pi_ref).stop_ids == [tokenizer.eos_token_id]


def test_a_policy_samples_itself_under_the_published_decoding_order_too(pi_ref, tokenizer, tiny_task):
    """eval.paper_compat orders guidance as the published code did; a policy baseline is not guided, so it
    samples itself with or without it. Its KL then is against pi_ref without top-p, as the published code's:
    finite where the two nuclei differ (ours is infinite there)."""
    policy = copy.deepcopy(pi_ref)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=noise))
    rows = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in tiny_task.problems("test")[:4]]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    runs = [generate(pi_ref, PromptBatch(ids, mask, stops(tokenizer)),
                     SamplingSpec(top_p=0.9, max_new_tokens=6, paper_compat=compat), torch.Generator().manual_seed(0),
                     Steering(policy=policy))
            for compat in (False, True)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.isfinite(runs[1].kl).all() and runs[1].kl.min().item() > 0
    row = torch.tensor(rows[:1])
    with torch.no_grad():  # the first step's published KL, by hand
        policy_logits, ref_logits = policy(input_ids=row).logits[:, -1], pi_ref(input_ids=row).logits[:, -1]
    first = SamplingSpec(top_p=0.9, max_new_tokens=1, paper_compat=True)
    one = generate(pi_ref, PromptBatch(row, torch.ones_like(row), stops(tokenizer)), first,
                   torch.Generator().manual_seed(0), Steering(policy=policy))
    logp = G.sampler_logprobs(policy_logits, 1.0, 0.9)
    expected = G.kl_divergence(logp, torch.log_softmax(ref_logits, -1))
    torch.testing.assert_close(one.kl, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("algo", ["reinforce", "dpo", "rpo"])
def test_each_policy_baseline_runs_end_to_end_and_reports_kl_to_pi_ref(algo, tmp_path_factory):
    work = tmp_path_factory.getbasetemp() / "policy_cli"
    work.mkdir(exist_ok=True)
    cli("+experiment=smoke", f"algo={algo}", "algo.policy.steps=10", "algo.policy.batch_size=8",
        f"cache_dir={work / 'cache'}", f"hydra.run.dir={work / algo}", cwd=work)
    import json

    metrics = json.loads((work / algo / "metrics.json").read_text())
    assert metrics["algo"] == algo and metrics["graph"] == "G(2,3)"
    assert metrics["eta"] is None and "time_policy_s" in metrics
    # The baseline moved away from pi_ref: other weights, and samples drawn at a KL above 0.
    from safetensors.torch import load_file

    trained = load_file(Path(metrics["dir_policy"]) / "model" / "model.safetensors")
    reference = load_file(Path(metrics["dir_pi_ref"]) / "model" / "model.safetensors")
    assert any(not torch.equal(trained[name], reference[name]) for name in reference)
    assert metrics["kl_mean"] > 0
