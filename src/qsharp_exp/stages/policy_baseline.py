"""Stage `policy_<algo>`: a copy of pi_ref fine-tuned by a policy-based baseline (REINFORCE, DPO, RPO;
training/policy.py), sampled at evaluation like pi_ref."""

from __future__ import annotations

import copy
from pathlib import Path

from qsharp_exp.config import RunConfig
from qsharp_exp.files import write_jsonl
from qsharp_exp.stages.cache import StageResult
from qsharp_exp.stages.context import SAMPLING_READS, RunContext
from qsharp_exp.stages.pi_ref import PiRef
from qsharp_exp.training.policy import train_policy


def train(ctx: RunContext, pi_ref: PiRef) -> StageResult:
    reads = ["seed", "algo.name", "algo.policy", "eval.batch_size", *SAMPLING_READS, *ctx.task_reads("train")]

    def build(cfg: RunConfig, out: Path) -> None:
        policy = copy.deepcopy(pi_ref.model)
        sampler = ctx.sampler(pi_ref.model, pi_ref.codec, cfg.eval.batch_size)
        curve = train_policy(cfg.algo.name, policy, ctx.task, sampler, cfg.algo.policy, ctx.training_env(cfg.seed))
        policy.save_pretrained(out / "model")
        pi_ref.codec.tokenizer.save_pretrained(out / "model")
        write_jsonl(out / "curve.jsonl", curve)

    return ctx.stage("policy", reads, build, after={"pi_ref": pi_ref.key}, directory=f"policy_{ctx.cfg.algo.name}")
