"""Experiment tracking (wandb), fed from what the run wrote: the stages' curves and the evaluation.

One wandb run per job, finished at its end; the jobs of a sweep share a group. Without an API key or
network an online run falls back to offline, so tracking never hangs or fails a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from qsharp_exp.config import LoggerConfig, RunConfig, as_dict
from qsharp_exp.files import read_jsonl

log = logging.getLogger(__name__)
SAMPLE_ROWS = 100  # generations shown in the samples table


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        hosts = netrc.netrc().hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def _init(cfg: LoggerConfig, run_cfg: RunConfig, name: str, group: str | None, out_dir: Path):
    import wandb

    mode = cfg.mode
    if mode == "online" and not _has_api_key():
        log.warning("logger=wandb: no API key (WANDB_API_KEY or `wandb login`), logging offline to %s/wandb", out_dir)
        mode = "offline"
    kwargs = dict(project=cfg.project, entity=cfg.entity, group=cfg.group or group, name=name, tags=cfg.tags,
                  config=as_dict(run_cfg), dir=str(out_dir), reinit="finish_previous",
                  settings=wandb.Settings(init_timeout=60, silent=True, x_disable_stats=True))
    try:
        return wandb.init(mode=mode, **kwargs)
    except Exception as err:  # no network, server down: keep the run's results, log offline instead
        if mode != "online":
            raise
        log.warning("logger=wandb: could not reach wandb (%s), logging offline to %s/wandb", err, out_dir)
        return wandb.init(mode="offline", **kwargs)


def log_run(run_cfg: RunConfig, metrics: dict, out_dir: Path, group: str | None) -> None:
    """Log a finished job: config, training curves of every stage it used, evaluation metrics, samples."""
    cfg = run_cfg.logger
    if cfg.name == "none":
        return
    import wandb

    out_dir.mkdir(parents=True, exist_ok=True)
    run = _init(cfg, run_cfg, out_dir.name, group, out_dir)
    try:
        for key, value in metrics.items():
            if not key.startswith("dir_") or key == "dir_evaluation":
                continue
            stage = key[len("dir_"):]
            curve = [p for p in _read_jsonl(Path(value) / "curve.jsonl") if "step" in p]
            if not curve:
                continue
            run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            for point in curve:
                run.log({f"{stage}/{k}": v for k, v in point.items() if isinstance(v, int | float)})
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        run.log({f"eval/{k}": v for k, v in numbers.items()})
        run.summary.update(numbers)
        samples = _read_jsonl(Path(metrics["dir_evaluation"]) / "samples.jsonl")[:SAMPLE_ROWS]
        if samples:
            columns = list(samples[0])
            run.log({"eval/samples": wandb.Table(columns=columns, data=[[s.get(c) for c in columns] for s in samples])})
    finally:
        run.finish()
