"""One run, top-down: task data -> pi_ref -> rollouts -> return models -> (policy) -> evaluation -> metrics.

Each stage (stages/) writes to a cache directory named by its inputs, so changing only `algo` or
`algo.eta` reuses pi_ref and the return models, and a rerun repeats nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from qsharp_exp.config import CollectMode, ConfigError, Distribution, RunConfig, UserError
from qsharp_exp.config_view import settings
from qsharp_exp.failures import BUILDING
from qsharp_exp.files import read_jsonl, write_json, write_text
from qsharp_exp.metrics import objective
from qsharp_exp.reporting.summary import print_summary
from qsharp_exp.stages import base_model, evaluation, pi_ref, policy_baseline, return_model_rounds
from qsharp_exp.stages.context import RunContext
from qsharp_exp.stages.extra import Built, check_registered, run_extra_stages
from qsharp_exp.tracking import Tracker
from qsharp_exp.training.stopping import stop_record


def run(cfg: RunConfig, out_dir: Path, tracker_group: str | None = None) -> dict:
    hf_logging.disable_progress_bar()  # our own bars cover the long stages
    torch.manual_seed(cfg.seed)
    BUILDING.clear()  # a run before this one in the same process may have ended inside a stage
    ctx = RunContext.create(cfg)
    out_dir = ctx.hw.dist.broadcast(out_dir)  # every rank resolved Hydra's ${now}; rank 0's dir is the run's
    check_before_work(ctx)
    if ctx.hw.dist.is_main:  # rank 0 owns the run directory and the tracker
        ctx.tracker = Tracker.start(cfg, out_dir, tracker_group)
    metrics = finished = None
    try:
        metrics = _stages(ctx)
        if ctx.hw.dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / "metrics.json", metrics)
            write_json(out_dir / "config.json", settings(cfg))  # what the report tells runs apart by
            write_text(out_dir / "samples.jsonl", (Path(metrics["dir_evaluation"]) / "samples.jsonl").read_text())
            if ctx.guided:  # the guide's reliability diagram beside the run's results
                reliability = Path(metrics[f"dir_return_model_round{ctx.guide_round}"]) / "reliability.png"
                if reliability.exists():
                    shutil.copyfile(reliability, out_dir / "guide_reliability.png")
            print_summary(metrics)
        finished = metrics
    finally:
        if ctx.tracker is not None:
            ctx.tracker.finish(finished)  # a job that failed or was interrupted is marked so
    return metrics


def _stages(ctx: RunContext) -> dict:
    base = base_model.load(ctx) if ctx.uses_base_model else None
    reference = pi_ref.load(ctx, base)
    models = return_model_rounds.train_rounds(ctx, reference, ctx.rounds_needed, base)
    guide = models[ctx.guide_round - 1] if ctx.guided else None
    ranker = models[-1] if ctx.ranks_with_return_model else None
    fine_tuned = policy_baseline.train(ctx, reference) if ctx.fine_tunes_policy else None
    evaluated = evaluation.evaluate(ctx, reference, guide, ranker, fine_tuned)
    added = run_extra_stages(ctx, Built(base, reference, models, fine_tuned, evaluated))
    return run_metrics(ctx, base, reference, evaluated.path / "metrics.json") | added


def check_before_work(ctx: RunContext) -> None:
    """What can be checked before hours of work: the added stages are registered, ZeRO has its ranks, the cache
    can be written, roll-outs can vary, and pi_ref's tokenizer and context fit the task and top-k
    (stages/pi_ref.py)."""
    check_registered(ctx.cfg.extra_stages)
    zero = ctx.cfg.hardware.zero_stage
    if zero and "WORLD_SIZE" not in os.environ:  # DeepSpeed would look for MPI after the first stages
        raise UserError(f"hardware.zero_stage={zero} shards work across the processes that torchrun starts: launch "
                        f"with `torchrun --nproc_per_node=<GPUs> -m qsharp_exp ...` (or a SLURM launcher, "
                        "docs/scale_out.md), or run one process with hardware.zero_stage=0.")
    root = ctx.root
    if root.exists() and not root.is_dir():
        raise UserError(f"cache_dir={root} is a file, not a directory: set cache_dir to a directory.")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cache_dir={root} cannot be written ({err.strerror}): set cache_dir to a writable "
                        "directory.") from None
    collect = ctx.cfg.collect
    if ctx.rounds_needed and collect.mode == CollectMode.algorithm1 and collect.samples_per_problem < 2:
        raise ConfigError(f"collect.samples_per_problem={collect.samples_per_problem}: a return model learns from "
                          "problems whose samples got different rewards, and one sample per problem never does: "
                          "set collect.samples_per_problem>=2.")
    guide = ctx.cfg.model.guide
    if ctx.rounds_needed and ctx.cfg.guide_train.calibrate and guide.distribution == Distribution.mse:
        raise ConfigError("guide_train.calibrate=true scales the head's logits, and model.guide.distribution=mse has "
                          "none (it outputs the mean itself): set guide_train.calibrate=false, or use bernoulli or "
                          "histogram.")
    pi_ref.check_before_work(ctx)


def run_metrics(ctx: RunContext, base: base_model.BaseModel | None, reference: pi_ref.PiRef,
                evaluation_metrics: Path) -> dict:
    """metrics.json of the run: one flat object of what ran, the evaluation's metrics and the objective J_eta, the
    base model's and pi_ref's accuracy when they were pretrained here, and each stage's time, directory and peak
    GPU memory."""
    cfg = ctx.cfg
    eta = cfg.algo.eta if ctx.guided else None
    measured = json.loads(evaluation_metrics.read_text())
    value, se = objective(read_jsonl(evaluation_metrics.parent / "samples.jsonl"), eta)
    result = {
        "task": cfg.task.name, "model": cfg.model.name, "algo": cfg.algo.name, **ctx.task.describe(),
        "eta": eta,
        "top_k": cfg.algo.top_k if ctx.guided else None,
        "guide_round": ctx.guide_round if ctx.guided else None,
        "paper_compat": cfg.eval.paper_compat,
        "reward_metric": ctx.task.reward_metric,
        **measured,
        "objective": value, "objective_se": se,  # J_eta = reward - eta * KL (pi_ref: its reward)
        **{f"base_{k}": v for k, v in (base.metrics if base else {}).items()},
        **{f"pi_ref_{k}": v for k, v in reference.metrics.items()},
    }
    if ctx.guided:  # how long the guide trained and how well its values match held-out returns
        guide_dir = ctx.stages[f"return_model_round{ctx.guide_round}"].path
        result.update(_guide_stop(guide_dir) | _guide_calibration(guide_dir))
    for name, stage in ctx.stages.items():
        result[f"time_{name}_s"] = round(stage.seconds, 2)
        result[f"build_time_{name}_s"] = stage.build_seconds
        result[f"dir_{name}"] = str(stage.path)
        if stage.peak_gpu_gib is not None:
            result[f"peak_gpu_gib_{name}"] = stage.peak_gpu_gib
    return result


def _guide_stop(stage_dir: Path) -> dict:
    """Why the guide's training stopped (training/stopping.py: converged, budget or fixed) and after how many steps."""
    record = stop_record(read_jsonl(stage_dir / "curve.jsonl"))
    if record is None:
        return {}
    return {"guide_stopped": record["stopped"], "guide_trained_steps": record["trained_steps"],
            "guide_budget_steps": record["budget_steps"]}


def _guide_calibration(stage_dir: Path) -> dict:
    """The guide's calibration on its validation split: ECE and Brier score as guided decoding used it (after
    temperature scaling when it was fitted), and the temperature."""
    path = stage_dir / "calibration.json"
    if not path.exists():
        return {}
    calibration = json.loads(path.read_text())
    used = calibration.get("after", calibration["before"])
    return {"guide_val_ece": used["ece"], "guide_val_brier": used["brier"],
            "guide_temperature": calibration["temperature"]}
