"""Algorithm 1's data collection (QSHARP.md section 2).

Roll in with pi_k (pi_ref guided by the previous round's return model), pick a switch time h
uniformly over the response, roll out with pi_ref from there. The final reward labels every
position t >= h. In round 1 pi_k = pi_ref, so the roll-in already is the roll-out.
With probability `explore_prob` the switch token is instead drawn uniformly from pi_ref's top-k
(Algorithm 2's exploration); the tokens after it still come from pi_ref, so labels stay pi_ref returns.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import PreTrainedModel

from qsharp_exp.config import CollectConfig
from qsharp_exp.decoding import Guidance, SamplingSpec
from qsharp_exp.hardware import Hardware
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.rollouts import sample_many
from qsharp_exp.tasks import Problem, Task
from qsharp_exp.training.common import progress


@dataclass
class Rollout:
    problem_id: str
    prompt: list[int]
    response: list[int]
    switch: int  # positions response[switch:] are training examples
    reward: float
    explored: bool = False  # the switch token was drawn uniformly from pi_ref's top-k

    to_dict = asdict


def collect(
    task: Task,
    problems: list[Problem],
    pi_ref: PreTrainedModel,
    codec: PromptCodec,
    roll_in: Guidance | None,
    cfg: CollectConfig,
    top_k: int,
    spec: SamplingSpec,
    hw: Hardware,
    seed: int,
    show_progress: bool = True,
    checkpoint: Path | None = None,
) -> list[Rollout]:
    """`checkpoint`: a directory where finished batches are kept, so that a killed collection resumes."""
    rng = random.Random(seed)
    jobs = [p for p in problems for _ in range(cfg.samples_per_problem)]
    prompts = codec.encode(jobs, spec.max_new_tokens)
    common = dict(
        pi_ref=pi_ref, spec=spec, stop_ids=codec.stop_ids, pad_id=codec.pad_id, hw=hw,
        batch_size=cfg.batch_size, show_progress=show_progress,
    )
    roll_ins = sample_many(prompts=prompts, guide=roll_in, desc="collect: roll-in", seed=seed,
                           checkpoint=checkpoint / "roll_in" if checkpoint else None, **common)
    switches = [rng.randrange(max(1, len(s.response))) for s in roll_ins]
    explore = [rng.random() < cfg.explore_prob for _ in jobs]
    # Rows that need a separate pi_ref roll-out: all of them when the roll-in was guided, else the explored.
    redo = [i for i in range(len(jobs)) if roll_in is not None or explore[i]]
    responses = [s.response for s in roll_ins]
    if redo:
        prefixes = [prompts[i] + roll_ins[i].response[: switches[i]] for i in redo]
        roll_outs = sample_many(
            prompts=prefixes, explore=[explore[i] for i in redo], explore_top_k=top_k,
            desc="collect: roll-out", seed=seed + 1, checkpoint=checkpoint / "roll_out" if checkpoint else None,
            **common,
        )
        for i, s in zip(redo, roll_outs, strict=True):
            # Cut to the response budget, as if the roll-out had max_new_tokens - switch tokens.
            responses[i] = (roll_ins[i].response[: switches[i]] + s.response)[: spec.max_new_tokens]
    rollouts = []
    for i, problem in progress(list(enumerate(jobs)), desc="collect: rewards", enabled=show_progress):
        text = codec.decode(responses[i])
        rollouts.append(
            Rollout(problem.id, prompts[i], responses[i], switches[i], task.reward(problem, text), explore[i])
        )
    return rollouts
