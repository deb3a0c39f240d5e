"""The return model's training data (docs/method.md, section 2): Algorithm 1's roll-in / roll-out
(`collect`), or the published star-graph code's pairs (`collect_pairs`).

Roll in with pi_k (pi_ref guided by the previous round's return model), pick a switch time h
uniformly over the response, roll out with pi_ref from there. The final reward labels every
position t >= h. In round 1 pi_k = pi_ref, so the roll-in already is the roll-out.
With probability `explore_prob` the switch token is instead drawn uniformly from pi_ref's top-k
(Algorithm 2's exploration); the tokens after it still come from pi_ref, so labels stay pi_ref returns.

Pairs: per problem, the reference answer and pi_ref's first wrong sample, every position labelled with
its whole response's reward (switch 0): balanced labels, and the one action pi_ref gets wrong in context.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from qsharp_exp.config import CollectConfig
from qsharp_exp.progress import progress
from qsharp_exp.sampling import Draw, Sampler, Steering
from qsharp_exp.tasks import Problem, Task


@dataclass
class Rollout:
    problem_id: str
    prompt: list[int]
    response: list[int]
    switch: int  # positions response[switch:] are training examples
    reward: float
    explored: bool = False  # the switch token was drawn uniformly from pi_ref's top-k

    to_dict = asdict


def collect(task: Task, problems: list[Problem], sampler: Sampler, cfg: CollectConfig, draw: Draw) -> list[Rollout]:
    """`sampler` samples pi_ref in batches of cfg.batch_size; the draw's steering guides the roll-in (a guide from
    round 2 on); its checkpoint is a directory where finished batches are kept, so that a killed collection
    resumes."""
    seed, checkpoint = draw.seed, draw.checkpoint
    rng = random.Random(seed)
    codec, max_new_tokens = sampler.codec, sampler.spec.max_new_tokens
    jobs = [p for p in problems for _ in range(cfg.samples_per_problem)]
    prompts = codec.encode(jobs, max_new_tokens)
    roll_ins = replace(sampler, desc="collect: roll-in").sample(
        prompts, Draw(seed, draw.steering, checkpoint / "roll_in" if checkpoint else None))
    switches = [rng.randrange(max(1, len(s.response))) for s in roll_ins]
    explore = [rng.random() < cfg.explore_prob for _ in jobs]
    # Rows that need a separate pi_ref roll-out: all of them when the roll-in was guided, else the explored.
    guided = draw.steering.guide is not None
    redo = [i for i in range(len(jobs)) if guided or explore[i]]
    responses = [s.response for s in roll_ins]
    if redo:
        prefixes = [prompts[i] + roll_ins[i].response[: switches[i]] for i in redo]
        # A roll-out has what the roll-in left of the response budget: the whole response stays within it,
        # and within the context that the prompt check allowed.
        exploring = Steering(explore=[explore[i] for i in redo], explore_top_k=cfg.top_k)
        budgets = [max_new_tokens - switches[i] for i in redo]
        roll_outs = replace(sampler, desc="collect: roll-out").sample(
            prefixes, Draw(seed + 1, exploring, checkpoint / "roll_out" if checkpoint else None), budgets=budgets)
        for i, s in zip(redo, roll_outs, strict=True):
            responses[i] = roll_ins[i].response[: switches[i]] + s.response
    rollouts = []
    for i, problem in progress(list(enumerate(jobs)), desc="collect: rewards", enabled=sampler.show_progress):
        text = codec.decode(responses[i])
        rollouts.append(
            Rollout(problem.id, prompts[i], responses[i], switches[i], task.reward(problem, text), explore[i])
        )
    return rollouts


def collect_pairs(task: Task, problems: list[Problem], sampler: Sampler, tries: int, draw: Draw
                  ) -> tuple[list[Rollout], dict[str, int]]:
    """Per problem the reference answer and pi_ref's first wrong sample (a reward below the reference's),
    sampling each problem up to `tries` times (the first try kept under the draw's checkpoint); problems where
    pi_ref was never wrong give no pair. Returns the rollouts (switch 0: every response position is an example)
    and counts for the summary."""
    codec, seed, checkpoint = sampler.codec, draw.seed, draw.checkpoint
    prompts = codec.encode(problems, sampler.spec.max_new_tokens)
    best = [task.reward(p, task.target(p)) for p in problems]
    wrong: dict[int, list[int]] = {}
    pending = list(range(len(problems)))
    attempts = 0
    while pending and attempts < tries:
        titled = replace(sampler, desc=f"collect: pairs, try {attempts + 1} ({len(pending)} problems)")
        kept = checkpoint / "try1" if checkpoint and not attempts else None
        samples = titled.sample([prompts[i] for i in pending], Draw(seed + attempts, checkpoint=kept))
        for i, sample in zip(pending, samples, strict=True):
            if task.reward(problems[i], codec.decode(sample.response)) < best[i]:
                wrong[i] = sample.response
        pending = [i for i in pending if i not in wrong]
        attempts += 1
    rollouts = []
    for i in sorted(wrong):
        problem = problems[i]
        rollouts.append(Rollout(problem.id, prompts[i], codec.response_ids(task.target(problem)), 0, best[i]))
        rollouts.append(Rollout(problem.id, prompts[i], wrong[i], 0, task.reward(problem, codec.decode(wrong[i]))))
    return rollouts, {"pairs": len(wrong), "never_wrong": len(pending), "sampling_passes": attempts}
