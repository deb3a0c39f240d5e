"""Experiment tracking (wandb): training curves and sampling progress live, while each stage is built
(`Tracker.live`), then the evaluation and the curves of stages reused from the cache when the job ends.

One wandb run per job; the jobs of a sweep share a group. The run's id is a digest of the job's settings,
so a rerun of the same job (after a crash, or Ctrl-C) resumes the same wandb run; what a wandb run has been sent
(the stage directories whose curves, and the evaluation whose metrics) is noted in the cache
(`<cache_dir>/tracking/<run id>.json`), so that a rerun does not send it twice. Without an API key or network
an online run falls back to offline, so tracking never hangs or fails a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from qsharp_exp.config import LoggerConfig, RunConfig, as_dict
from qsharp_exp.config_view import non_semantic, settings
from qsharp_exp.files import read_jsonl, write_json

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


def run_id(run_cfg: RunConfig) -> str:
    """The wandb run id of a job: a digest of its settings (where files go and how it is logged left out)."""
    kept = {k: v for k, v in settings(run_cfg).items() if not non_semantic(k)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _init(cfg: LoggerConfig, run_cfg: RunConfig, name: str, group: str | None, out_dir: Path):
    import wandb

    mode = cfg.mode
    if mode == "online" and not _has_api_key():
        log.warning("logger=wandb: no API key (WANDB_API_KEY or `wandb login`), logging offline to %s/wandb", out_dir)
        mode = "offline"
    kwargs = dict(project=cfg.project, entity=cfg.entity, group=cfg.group or group, name=name, tags=cfg.tags,
                  config=as_dict(run_cfg), dir=str(out_dir), reinit="finish_previous", id=run_id(run_cfg),
                  resume="allow", settings=wandb.Settings(init_timeout=60, silent=True, x_disable_stats=True))
    try:
        return wandb.init(mode=mode, **kwargs)
    except Exception as err:  # no network, server down: keep the run's results, log offline instead
        if mode != "online":
            raise
        log.warning("logger=wandb: could not reach wandb (%s), logging offline to %s/wandb", err, out_dir)
        return wandb.init(mode="offline", **kwargs)


def _numbers(point: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a point, nested ones (accuracy by position) as `name/key`."""
    out = {}
    for key, value in point.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """The job's wandb run while its stages are built (rank 0, logger=wandb): `live` sends a stage's points as they
    are made; `finish` sends what the run reused from the cache and closes the run."""

    def __init__(self, run: Any, sent: Path) -> None:
        self.run = run
        self.sent_path = sent  # where the directories already sent to this wandb run are noted
        self.stages_logged: set[str] = set()  # stages whose curves went out live

    @classmethod
    def start(cls, run_cfg: RunConfig, out_dir: Path, group: str | None) -> Tracker | None:
        """Open the job's wandb run before its first stage (None with logger=none)."""
        if run_cfg.logger.name == "none":
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        run = _init(run_cfg.logger, run_cfg, out_dir.name, group, out_dir)
        return cls(run, Path(run_cfg.cache_dir).absolute() / "tracking" / f"{run_id(run_cfg)}.json")

    def live(self, stage: str, point: dict) -> None:
        """Log one point of `stage` while it is built (a training step's loss and validation accuracy by position,
        a sampled batch). Points without a `step` go to the run's summary."""
        if "step" not in point:
            self.run.summary.update({f"{stage}/{k}": v for k, v in _numbers(point).items()})
            return
        if stage not in self.stages_logged:
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self.stages_logged.add(stage)
        self.run.log({f"{stage}/{k}": v for k, v in _numbers(point).items()})

    def finish(self, metrics: dict | None) -> None:
        """Close the job's run: with `metrics` (a finished job), the curves of stages reused from the cache, the
        evaluation's metrics and samples; without (a failed job), as failed."""
        try:
            if metrics is not None:
                self._log_results(metrics)
        finally:
            self.run.finish(exit_code=0 if metrics is not None else 1)

    def _sent(self) -> set[str]:
        """The stage directories this wandb run was sent by earlier runs of the job."""
        try:
            return set(json.loads(self.sent_path.read_text()))
        except (OSError, ValueError):
            return set()

    def _log_results(self, metrics: dict) -> None:
        import wandb

        run, sent = self.run, self._sent()
        for key, value in metrics.items():
            stage = key[len("dir_"):]
            if not key.startswith("dir_") or key == "dir_evaluation" or stage in self.stages_logged or value in sent:
                continue
            curve = [p for p in _read_jsonl(Path(value) / "curve.jsonl") if "step" in p]
            if curve:
                run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
                for point in curve:
                    run.log({f"{stage}/{k}": v for k, v in _numbers(point).items()})
        numbers = _numbers({k: v for k, v in metrics.items() if not k.startswith("dir_")})
        run.summary.update(numbers)
        if metrics["dir_evaluation"] not in sent:
            run.log({f"eval/{k}": v for k, v in numbers.items()})
            samples = _read_jsonl(Path(metrics["dir_evaluation"]) / "samples.jsonl")[:SAMPLE_ROWS]
            if samples:
                columns = list(samples[0])
                run.log({"eval/samples": wandb.Table(columns=columns, data=[[s.get(c) for c in columns]
                                                                             for s in samples])})
        self.sent_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.sent_path, sorted(sent | {v for k, v in metrics.items() if k.startswith("dir_")}))
