"""Evaluation of a (guided) sampler on test problems: pass@1, maj1@k, pass@k, exact KL, samples.

pass@1 = mean correctness of single samples; maj1@k = the majority answer of a problem's k samples
(answers grouped by the task's equivalence) is right; pass@k = at least one of the k is right;
kl_mean = per-response KL(pi || pi_ref) in nats, averaged over samples.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from transformers import PreTrainedModel

from qsharp_exp.decoding import Guidance, SamplingSpec
from qsharp_exp.hardware import Hardware
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.rollouts import sample_many
from qsharp_exp.tasks import Problem, Task
from qsharp_exp.tasks.answers import majority_vote
from qsharp_exp.training.common import progress


def evaluate(
    task: Task,
    problems: list[Problem],
    pi_ref: PreTrainedModel,
    codec: PromptCodec,
    guide: Guidance | None,
    spec: SamplingSpec,
    num_samples: int,
    batch_size: int,
    hw: Hardware,
    seed: int,
    desc: str = "evaluate",
    show_progress: bool = True,
    checkpoint: Path | None = None,
) -> tuple[dict, list[dict]]:
    jobs = [p for p in problems for _ in range(num_samples)]
    sampled = sample_many(
        pi_ref, codec.encode(jobs, spec.max_new_tokens), spec, codec.stop_ids, codec.pad_id, hw, seed, batch_size,
        guide=guide, desc=desc, show_progress=show_progress, checkpoint=checkpoint,
    )
    samples, by_problem = [], defaultdict(list)
    for i, (problem, s) in enumerate(zip(jobs, sampled, strict=True)):
        text = codec.decode(s.response)
        sample = {"problem_id": problem.id, "sample": i % num_samples, "response": text,
                  "answer": task.answer_of(text), "correct": task.reward(problem, text), "kl": round(s.kl, 6)}
        samples.append(sample)
        by_problem[problem.id].append(sample)
    majority_right = []
    gold = {p.id: p.answer for p in problems}
    for pid, rows in progress(by_problem.items(), total=len(by_problem), desc="majority vote",
                              enabled=show_progress and num_samples > 1):
        voted = majority_vote([r["answer"] for r in rows], task.same_answer)
        majority_right.append(voted is not None and task.same_answer(gold[pid], voted))
    pass_at_1 = sum(s["correct"] for s in samples) / len(samples)
    metrics = {
        "accuracy": pass_at_1,
        "pass@1": pass_at_1,
        f"maj1@{num_samples}": sum(majority_right) / len(majority_right),
        f"pass@{num_samples}": sum(max(r["correct"] for r in rows) > 0 for rows in by_problem.values())
        / len(by_problem),
        "kl_mean": sum(s["kl"] for s in samples) / len(samples),
        "answered": sum(s["answer"] is not None for s in samples) / len(samples),
        "num_problems": len(problems),
        "num_samples": num_samples,
    }
    return metrics, samples
