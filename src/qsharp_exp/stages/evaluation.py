"""Stage `evaluation`: samples for the test problems from pi_ref, guided by a return model or replaced by
a fine-tuned policy, scored by the task (and ranked by the last round's return model); metrics.json and
samples.jsonl (evaluation.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from transformers import AutoModelForCausalLM

from qsharp_exp.config import RunConfig
from qsharp_exp.files import write_json, write_jsonl
from qsharp_exp.guidance import Guidance, GuidanceSettings
from qsharp_exp.metrics import evaluate as evaluate_samples
from qsharp_exp.sampling import Draw, Steering
from qsharp_exp.stages.cache import StageResult
from qsharp_exp.stages.context import RunContext
from qsharp_exp.stages.pi_ref import PiRef


def evaluate(ctx: RunContext, pi_ref: PiRef, guide: StageResult | None, reward_model: StageResult | None,
             policy: StageResult | None) -> StageResult:
    guide_reads = ["algo.eta", "algo.top_k", "algo.non_candidates"] if guide is not None else []
    reads = ["seed", "algo.name", *guide_reads, "eval", *ctx.task_reads("test")]

    def build(cfg: RunConfig, out: Path, resume: Path) -> None:
        guidance = None
        if guide is not None:
            algo = cfg.algo
            guidance = Guidance.from_settings(ctx.load_return_model(guide), GuidanceSettings(
                algo.name, algo.eta, algo.top_k, algo.non_candidates))
        ranker = ctx.load_return_model(reward_model) if reward_model is not None else None
        sampler_policy = _load_policy(ctx, policy) if policy is not None else None
        sampler = replace(ctx.sampler(pi_ref.model, pi_ref.codec, cfg.eval.batch_size),
                          desc=f"evaluate {cfg.algo.name}")
        steering = Steering(guide=guidance, policy=sampler_policy)
        metrics, samples = evaluate_samples(ctx.task, ctx.task.problems("test"), sampler, cfg.eval.num_samples,
                                            Draw(cfg.seed, steering, resume), ranker)
        write_json(out / "metrics.json", metrics)
        write_jsonl(out / "samples.jsonl", samples)

    after = {"pi_ref": pi_ref.key, "guide": guide.key if guide else None, "policy": policy.key if policy else None,
             "reward_model": reward_model.key if reward_model else None}
    if policy is not None:  # a policy samples itself (under eval.paper_compat too, where it once sampled pi_ref)
        after["samples_from"] = "policy"
    return ctx.stage("evaluation", reads, build, after=after, resumable=True)


def _load_policy(ctx: RunContext, stage: StageResult):
    return AutoModelForCausalLM.from_pretrained(stage.path / "model").to(ctx.hw.device).eval()
