"""Stage `rollouts_round<k>`: Algorithm 1's data for round k, rolled in with pi_ref guided by the previous
round's return model (Q#, at collect.eta) and rolled out with pi_ref; or (collect.mode=pairs, one round)
the published star-graph code's pairs of reference answer and pi_ref's wrong sample (training/collect.py)."""

from __future__ import annotations

from pathlib import Path

from qsharp_exp.config import CollectMode, RunConfig
from qsharp_exp.files import write_json, write_jsonl
from qsharp_exp.guidance import Guidance, GuidanceSettings
from qsharp_exp.sampling import Draw, Steering
from qsharp_exp.stages.cache import StageResult
from qsharp_exp.stages.context import RunContext
from qsharp_exp.stages.pi_ref import PiRef
from qsharp_exp.training.collect import collect, collect_pairs


def collect_round(ctx: RunContext, pi_ref: PiRef, round_: int, previous: StageResult | None) -> StageResult:
    """`previous`: the return model of round k-1 (None in round 1, whose roll-in is pi_ref itself)."""
    if ctx.cfg.collect.mode == CollectMode.pairs:
        return _pairs(ctx, pi_ref)
    # Round 1's roll-in is pi_ref itself: the roll-in guide's settings only shape later rounds.
    guide_reads = ["collect.eta", "collect.non_candidates"] if previous is not None else []
    reads = ["seed", "collect.mode", "collect.samples_per_problem", "collect.explore_prob", "collect.batch_size",
             "collect.top_k", *guide_reads, *ctx.collect_sampling_reads, *ctx.task_reads("train")]

    def build(cfg: RunConfig, out: Path, resume: Path) -> None:
        roll_in = None
        if previous is not None:
            own = cfg.collect  # the roll-in is Q# (Algorithm 1's pi_k) at collect's settings
            roll_in = Guidance.from_settings(ctx.load_return_model(previous), GuidanceSettings(
                "qsharp", own.eta, own.top_k, own.non_candidates))
        sampler = ctx.sampler(pi_ref.model, pi_ref.codec, cfg.collect.batch_size, ctx.collect_spec)
        draw = Draw(cfg.seed + 1000 * round_, Steering(guide=roll_in), resume)
        rollouts = collect(ctx.task, ctx.task.problems("train"), sampler, cfg.collect, draw)
        write_jsonl(out / "rollouts.jsonl", (x.to_dict() for x in rollouts))
        mean = sum(x.reward for x in rollouts) / len(rollouts)
        write_json(out / "summary.json", {"rollouts": len(rollouts), "mean_reward": mean})

    after = {"pi_ref": pi_ref.key, "roll_in_guide": previous.key if previous else None, "round": round_}
    return ctx.stage(f"rollouts_round{round_}", reads, build, after=after, resumable=True)


def _pairs(ctx: RunContext, pi_ref: PiRef) -> StageResult:
    reads = ["seed", "collect.mode", "collect.pair_tries", "collect.batch_size", *ctx.collect_sampling_reads,
             *ctx.task_reads("train")]

    def build(cfg: RunConfig, out: Path, resume: Path) -> None:
        sampler = ctx.sampler(pi_ref.model, pi_ref.codec, cfg.collect.batch_size, ctx.collect_spec)
        rollouts, counts = collect_pairs(ctx.task, ctx.task.problems("train"), sampler, cfg.collect.pair_tries,
                                         Draw(cfg.seed + 1000, checkpoint=resume))
        write_jsonl(out / "rollouts.jsonl", (x.to_dict() for x in rollouts))
        write_json(out / "summary.json", {"rollouts": len(rollouts), **counts})

    return ctx.stage("rollouts_pairs", reads, build, after={"pi_ref": pi_ref.key}, resumable=True)
