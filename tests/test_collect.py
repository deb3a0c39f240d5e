"""Algorithm 1's collection: switch, exploration, labels and determinism."""

import pytest
import torch

from helpers import make_guide, sampler
from qsharp_exp.config import CollectConfig
from qsharp_exp.guidance import RULES, Guidance
from qsharp_exp.sampling import Draw, SamplingSpec, Steering
from qsharp_exp.training.collect import collect

SPEC = SamplingSpec(max_new_tokens=8)


def run(tiny_task, pi_ref, tokenizer, explore_prob, roll_in=None, seed=0):
    cfg = CollectConfig(samples_per_problem=3, explore_prob=explore_prob, batch_size=16, top_k=4)
    pi_ref_sampler = sampler(pi_ref, tokenizer, SPEC, cfg.batch_size)
    return collect(tiny_task, tiny_task.problems("train")[:6], pi_ref_sampler, cfg, Draw(seed, Steering(guide=roll_in)))


@pytest.mark.parametrize("guided", [False, True])
def test_rollouts_are_labelled_with_the_reward_of_their_final_text_and_are_deterministic(
        tiny_task, pi_ref, tokenizer, guided):
    roll_in = Guidance(make_guide(tokenizer), RULES["qsharp"], 0.1, 4) if guided else None
    rollouts = run(tiny_task, pi_ref, tokenizer, 0.5, roll_in)
    assert len(rollouts) == 18
    problems = {p.id: p for p in tiny_task.problems("train")}
    for r in rollouts:
        assert 0 <= r.switch < max(1, len(r.response)) and len(r.response) <= SPEC.max_new_tokens
        text = tokenizer.decode(r.response, skip_special_tokens=True)
        assert r.reward == tiny_task.reward(problems[r.problem_id], text)
    again = run(tiny_task, pi_ref, tokenizer, 0.5, roll_in)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in rollouts]


def test_explored_switch_token_comes_from_pi_refs_top_k(tiny_task, pi_ref, tokenizer):
    for r in run(tiny_task, pi_ref, tokenizer, explore_prob=1.0):
        with torch.no_grad():
            logits = pi_ref(input_ids=torch.tensor([r.prompt + r.response[: r.switch]])).logits[0, -1]
        assert r.response[r.switch] in logits.topk(4).indices.tolist()


def test_roll_outs_stay_within_the_context_the_prompt_check_allowed(tiny_task, tokenizer):
    """A roll-out after a switch at h has max_new_tokens - h tokens: with a GPT-2 whose context is exactly
    prompt + max_new_tokens, a roll-out with the whole budget would run past its position table."""
    from dataclasses import replace

    from helpers import tiny_arch
    from qsharp_exp.models.lm import build_causal_lm

    prompt_length = len(tokenizer(tiny_task.problems("train")[0].prompt, add_special_tokens=False)["input_ids"])
    arch = replace(tiny_arch("gpt2"), max_positions=prompt_length + SPEC.max_new_tokens, initializer_range=0.5)
    pi_ref = build_causal_lm(arch, tokenizer, seed=0).eval()  # random: long responses, switches far in
    rollouts = run(tiny_task, pi_ref, tokenizer, explore_prob=1.0)
    assert max(r.switch for r in rollouts) > 0
    assert all(len(r.response) <= SPEC.max_new_tokens for r in rollouts)
