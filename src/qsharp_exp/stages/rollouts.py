"""Stage `rollouts_round<k>`: Algorithm 1's data for round k, rolled in with pi_ref guided by the previous
round's return model (Q#, at collect.eta) and rolled out with pi_ref; or (collect.mode=pairs, one round)
the published star-graph code's pairs of reference answer and pi_ref's wrong sample (training/collect.py)."""

from __future__ import annotations

from pathlib import Path

from qsharp_exp.config import CollectMode, NonCandidates, as_dict
from qsharp_exp.files import write_json, write_jsonl
from qsharp_exp.guidance import RULES, Guidance
from qsharp_exp.stages.cache import StageResult
from qsharp_exp.stages.context import RunContext
from qsharp_exp.stages.pi_ref import PiRef
from qsharp_exp.training.collect import collect, collect_pairs


def collect_round(ctx: RunContext, pi_ref: PiRef, round_: int, previous: StageResult | None) -> StageResult:
    """`previous`: the return model of round k-1 (None in round 1, whose roll-in is pi_ref itself)."""
    cfg = ctx.cfg
    if cfg.collect.mode == CollectMode.pairs:
        return _pairs(ctx, pi_ref)
    # Top-level `top_k` and `sampling` as before these became collection's own settings, so that keys made
    # then stay valid; `non_candidates` only shapes a guided roll-in, so round 1 does not read it.
    own = ("rounds", "pair_tries", "top_k", "non_candidates", "temperature", "top_p", "max_new_tokens")
    inputs = {"pi_ref": pi_ref.key, "roll_in_guide": previous.key if previous else None, "round": round_,
              "collect": {k: v for k, v in as_dict(cfg.collect).items() if k not in own},
              "top_k": cfg.collect.top_k, "sampling": as_dict(ctx.collect_spec), "seed": cfg.seed,
              "task": ctx.task_inputs("train")}
    if previous is not None:
        inputs["non_candidates"] = cfg.collect.non_candidates

    def build(out: Path, resume: Path) -> None:
        roll_in = None
        if previous is not None:
            roll_in = Guidance(ctx.load_return_model(previous), RULES["qsharp"], cfg.collect.eta, cfg.collect.top_k,
                               cfg.collect.non_candidates == NonCandidates.mask)
        sampler = ctx.sampler(pi_ref.model, pi_ref.codec, cfg.collect.batch_size, ctx.collect_spec)
        rollouts = collect(ctx.task, ctx.task.problems("train"), sampler, roll_in, cfg.collect,
                           cfg.seed + 1000 * round_, resume)
        write_jsonl(out / "rollouts.jsonl", (x.to_dict() for x in rollouts))
        mean = sum(x.reward for x in rollouts) / len(rollouts)
        write_json(out / "summary.json", {"rollouts": len(rollouts), "mean_reward": mean})

    return ctx.stage(f"rollouts_round{round_}", inputs, build, resumable=True)



def _pairs(ctx: RunContext, pi_ref: PiRef) -> StageResult:
    cfg = ctx.cfg
    inputs = {"pi_ref": pi_ref.key, "mode": "pairs", "pair_tries": cfg.collect.pair_tries,
              "batch_size": cfg.collect.batch_size, "sampling": as_dict(ctx.collect_spec), "seed": cfg.seed,
              "task": ctx.task_inputs("train")}

    def build(out: Path, resume: Path) -> None:
        sampler = ctx.sampler(pi_ref.model, pi_ref.codec, cfg.collect.batch_size, ctx.collect_spec)
        rollouts, counts = collect_pairs(ctx.task, ctx.task.problems("train"), sampler, cfg.collect.pair_tries,
                                         cfg.seed + 1000, resume)
        write_jsonl(out / "rollouts.jsonl", (x.to_dict() for x in rollouts))
        write_json(out / "summary.json", {"rollouts": len(rollouts), **counts})

    return ctx.stage("rollouts_pairs", inputs, build, resumable=True)
