"""Evaluation of a (guided) sampler on test problems: rewards, exact KL to pi_ref, samples."""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qsharp_exp.decoding import Guidance, SamplingSpec
from qsharp_exp.hardware import Hardware
from qsharp_exp.rollouts import sample_many
from qsharp_exp.tasks import Problem, Task


def evaluate(
    task: Task,
    problems: list[Problem],
    pi_ref: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    guide: Guidance | None,
    spec: SamplingSpec,
    num_samples: int,
    batch_size: int,
    hw: Hardware,
    seed: int,
    desc: str = "evaluate",
    show_progress: bool = True,
) -> tuple[dict, list[dict]]:
    generator = torch.Generator(device=hw.device).manual_seed(seed)
    jobs = [p for p in problems for _ in range(num_samples)]
    prompts = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in jobs]
    sampled = sample_many(
        pi_ref, prompts, spec, tokenizer.eos_token_id, tokenizer.pad_token_id, hw, generator, batch_size,
        guide=guide, desc=desc, show_progress=show_progress,
    )
    samples, per_problem = [], defaultdict(list)
    for problem, s in zip(jobs, sampled, strict=True):
        text = tokenizer.decode(s.response, skip_special_tokens=True)
        reward = task.reward(problem, text)
        per_problem[problem.id].append(reward)
        samples.append({"problem_id": problem.id, "response": text, "reward": reward, "kl": round(s.kl, 6)})
    rewards = [s["reward"] for s in samples]
    metrics = {
        "accuracy": sum(rewards) / len(rewards),
        "pass@1": sum(rewards) / len(rewards),
        f"pass@{num_samples}": sum(max(v) > 0 for v in per_problem.values()) / len(per_problem),
        "kl_mean": sum(s["kl"] for s in samples) / len(samples),
        "num_problems": len(problems),
        "num_samples": num_samples,
    }
    return metrics, samples
