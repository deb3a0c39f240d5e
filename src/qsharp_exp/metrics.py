"""Evaluation of a (guided) sampler on test problems: pass@1, maj1@k, pass@k, exact KL, samples.

pass@1 = mean correctness of single samples; maj1@k = the majority answer of a problem's k samples
(answers grouped by the task's equivalence) is right; pass@k = at least one of the k is right;
kl_mean = per-response KL(pi || pi_ref) in nats, averaged over samples.
With a `reward_model` (the trained return model; Q# as a reward model, the paper's Table 3), every
finished response is also scored by its value at the end (the final token, EOS, after the response):
rm_best_of_k = the highest-scored of a problem's k samples is right; rm_maj1@k = the answer group with
the largest summed score is right.

Every accuracy-like metric (and kl_mean) has its standard error beside it as `<metric>_se`: the standard
deviation over problems (sample variance, n - 1) of the per-problem value divided by sqrt(#problems), where a
problem's value is the mean over its samples for per-sample metrics (pass@1, kl_mean) and 0/1 for per-problem
ones (maj1@k, pass@k, rm_*). Samples of one problem are correlated, so they are averaged before the spread
is taken, never counted as independent draws.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch

from qsharp_exp.models.return_model import Examples, ReturnModel
from qsharp_exp.progress import progress
from qsharp_exp.sampling import Draw, Sampled, Sampler
from qsharp_exp.tasks import Problem, Task
from qsharp_exp.tasks.answers import majority_vote


def mean_and_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean of per-problem values and its standard error (None for fewer than two problems)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def per_problem_means(samples: Sequence[dict], key: str) -> dict[str, float]:
    """{problem_id: mean of `key` over the problem's samples} (samples.jsonl rows)."""
    by: dict[str, list[float]] = defaultdict(list)
    for row in samples:
        by[row["problem_id"]].append(float(row[key]))
    return {pid: sum(v) / len(v) for pid, v in by.items()}


def objective_per_problem(samples: Sequence[dict], eta: float) -> dict[str, float]:
    """J_eta = reward - eta * KL(pi || pi_ref) per problem: the KL-regularised objective that Q# maximises when
    its values are exact (docs/method.md, section 1)."""
    reward, kl = per_problem_means(samples, "correct"), per_problem_means(samples, "kl")
    return {pid: reward[pid] - eta * kl[pid] for pid in reward}


def objective(samples: Sequence[dict], eta: float | None) -> tuple[float | None, float | None]:
    """(J_eta, its standard error over problems). With no eta (pi_ref, a fine-tuned policy) it is the reward
    where the KL is 0 (pi_ref), and undefined (None) otherwise."""
    if eta is None:
        if any(row["kl"] for row in samples):
            return None, None
        eta = 0.0
    return mean_and_se(list(objective_per_problem(samples, eta).values()))


def paired_difference(a: dict[str, float], b: dict[str, float]) -> tuple[float, float | None, int]:
    """(mean of a - b over the problems both hold, its paired standard error, how many problems): the
    comparison of two methods on the same test problems, where each problem's own difficulty cancels."""
    shared = sorted(a.keys() & b.keys())
    if not shared:
        raise ValueError("the two runs share no test problem: a paired difference needs the same problems")
    mean, se = mean_and_se([a[pid] - b[pid] for pid in shared])
    return mean, se, len(shared)


def with_standard_errors(per_problem: dict[str, Sequence[float]]) -> dict[str, float | None]:
    """{name: mean, name_se: its standard error} for each metric's per-problem values."""
    out: dict[str, float | None] = {}
    for name, values in per_problem.items():
        out[name], out[f"{name}_se"] = mean_and_se(values)
    return out


@torch.no_grad()
def final_values(model: ReturnModel, prompts: list[list[int]], sampled: list[Sampled], sampler: Sampler) -> list[float]:
    """The return model's expected return at the last token of each response (a stop token is appended to
    responses cut by the token budget, so every response is scored as finished)."""
    codec, hw = sampler.codec, sampler.hw
    sequences = []
    for prompt, s in zip(prompts, sampled, strict=True):
        response = s.response if s.response and s.response[-1] in codec.stop_ids else [*s.response, codec.eos_id]
        sequences.append((prompt, response, len(response) - 1))
    scores: list[float] = []
    for start in range(0, len(sequences), sampler.batch_size):
        examples = Examples.of(model.kind, sequences[start : start + sampler.batch_size], codec.pad_id)
        with hw.autocast():
            out = examples.outputs(model, hw.device)
        scores.extend(model.distribution.mean(out).float().cpu().tolist())
    return scores


def evaluate(task: Task, problems: list[Problem], sampler: Sampler, num_samples: int, draw: Draw,
             reward_model: ReturnModel | None = None) -> tuple[dict, list[dict]]:
    """`num_samples` samples per problem from pi_ref, or what the draw's steering asks for (a guide, a policy),
    resumable from the draw's checkpoint; `reward_model` ranks each problem's samples. The progress bar says
    `sampler.desc`."""
    codec = sampler.codec
    jobs = [p for p in problems for _ in range(num_samples)]
    prompts = codec.encode(jobs, sampler.spec.max_new_tokens)
    sampled = sampler.sample(prompts, draw)
    # Ranking needs several samples: with one, best-of-1 and the weighted vote are just pass@1.
    rank = reward_model is not None and num_samples > 1
    scores = final_values(reward_model, prompts, sampled, sampler) if rank else None
    samples, by_problem = [], defaultdict(list)
    for i, (problem, s) in enumerate(zip(jobs, sampled, strict=True)):
        text = codec.decode(s.response)
        sample = {"problem_id": problem.id, "sample": i % num_samples, "response": text,
                  "answer": task.answer_of(text), "correct": task.reward(problem, text), "kl": round(s.kl, 6)}
        if scores is not None:
            sample["rm_score"] = round(scores[i], 6)
        samples.append(sample)
        by_problem[problem.id].append(sample)
    majority_right, rm_best_right, rm_vote_right = [], [], []
    gold = {p.id: p.answer for p in problems}
    for pid, rows in progress(by_problem.items(), total=len(by_problem), desc="majority vote",
                              enabled=sampler.show_progress and num_samples > 1):
        voted = majority_vote([r["answer"] for r in rows], task.same_answer)
        majority_right.append(voted is not None and task.same_answer(gold[pid], voted))
        if scores is not None:
            rm_best_right.append(max(rows, key=lambda r: r["rm_score"])["correct"] > 0)
            weighted = majority_vote([r["answer"] for r in rows], task.same_answer, [r["rm_score"] for r in rows])
            rm_vote_right.append(weighted is not None and task.same_answer(gold[pid], weighted))
    k = num_samples
    rows_by_problem = list(by_problem.values())
    per_problem = {
        "pass@1": [sum(r["correct"] for r in rows) / len(rows) for rows in rows_by_problem],
        f"maj1@{k}": [float(x) for x in majority_right],
        f"pass@{k}": [float(max(r["correct"] for r in rows) > 0) for rows in rows_by_problem],
        "kl_mean": [sum(r["kl"] for r in rows) / len(rows) for rows in rows_by_problem],
    }
    if scores is not None:
        per_problem[f"rm_best_of_{k}"] = [float(x) for x in rm_best_right]
        per_problem[f"rm_maj1@{k}"] = [float(x) for x in rm_vote_right]
    measured = with_standard_errors(per_problem)
    metrics = {
        "accuracy": measured["pass@1"],
        "accuracy_se": measured["pass@1_se"],
        **measured,
        "answered": sum(s["answer"] is not None for s in samples) / len(samples),
        "num_problems": len(problems),
        "num_samples": num_samples,
    }
    return metrics, samples
