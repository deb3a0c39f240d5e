"""Guide a pi_ref with its trained return model through transformers' plain `model.generate` and the
GuidanceLogitsProcessor, and compare the accuracy with the framework's own evaluation of the same run.

    python experiments/guide_with_generate.py [overrides of the run, e.g. +experiment=smoke]

Runs (or reuses from the cache) `python -m qsharp_exp algo=qsharp <overrides>`, then samples the same test
problems, as many times each, with `generate` at the run's eta, top-k, temperature and top-p, and prints
both accuracies with their standard errors and how many standard errors apart they are.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections import defaultdict

import torch

import qsharp_exp
from qsharp_exp.padding import left_pad
from qsharp_exp.tasks import build_task


def main(overrides: list[str]) -> int:
    cfg = qsharp_exp.compose_config("algo=qsharp", *overrides)
    with tempfile.TemporaryDirectory() as out:
        metrics = qsharp_exp.run(cfg, out)
    pi_ref, tokenizer = qsharp_exp.load_pi_ref(metrics)
    guide = qsharp_exp.load_guide(metrics)
    task, ev = build_task(cfg.task), cfg.eval
    spec = qsharp_exp.SamplingSpec(temperature=ev.temperature, top_p=ev.top_p, max_new_tokens=ev.max_new_tokens)
    settings = qsharp_exp.GuidanceSettings("qsharp", cfg.algo.eta, cfg.algo.top_k, str(cfg.algo.non_candidates))
    processor = qsharp_exp.GuidanceLogitsProcessor(guide, settings, tokenizer=tokenizer, spec=spec)
    problems = task.problems("test")
    jobs = [p for p in problems for _ in range(ev.num_samples)]
    torch.manual_seed(cfg.seed)
    correct: dict[str, list[float]] = defaultdict(list)
    kl: list[float] = []
    for start in range(0, len(jobs), ev.batch_size):
        batch = jobs[start : start + ev.batch_size]
        ids, mask = left_pad([tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in batch],
                             tokenizer.pad_token_id)
        with torch.no_grad():
            out = pi_ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=ev.max_new_tokens,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  **processor.generate_kwargs())
        kl += processor.kl.tolist()
        for problem, row in zip(batch, out[:, ids.shape[1] :], strict=True):
            correct[problem.id].append(task.reward(problem, tokenizer.decode(row, skip_special_tokens=True)))
    per_problem = [sum(v) / len(v) for v in correct.values()]
    accuracy = sum(per_problem) / len(per_problem)
    se = math.sqrt(sum((x - accuracy) ** 2 for x in per_problem) / (len(per_problem) - 1) / len(per_problem))
    gap = abs(accuracy - metrics["accuracy"]) / math.hypot(se, metrics["accuracy_se"]) if se or metrics[
        "accuracy_se"] else 0.0
    print(f"framework (python -m qsharp_exp algo=qsharp): accuracy {metrics['accuracy']:.4f} ± "
          f"{metrics['accuracy_se']:.4f}, KL {metrics['kl_mean']:.4f}")
    print(f"model.generate + GuidanceLogitsProcessor:      accuracy {accuracy:.4f} ± {se:.4f}, "
          f"KL {sum(kl) / len(kl):.4f}")
    print(f"{len(problems)} problems x {ev.num_samples} samples; the accuracies are {gap:.2f} standard errors apart")
    return 0 if gap <= 2 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
