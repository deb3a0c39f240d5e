"""What a finished run recorded: the stage directories its metrics.json names (the guide to load or export)."""

from __future__ import annotations

from pathlib import Path

from qsharp_exp.config import UserError


def guide_folder(metrics: dict) -> Path:
    """The return model that guided the run (its guide_round), else the last round's (a ranking run)."""
    rounds = sorted(k for k in metrics if k.startswith("dir_return_model_round"))
    if not rounds:
        raise UserError("this run trained no return model (algo=pi_ref without ranking, or a policy baseline)")
    chosen = f"dir_return_model_round{metrics['guide_round']}" if metrics.get("guide_round") else rounds[-1]
    return recorded_dir(metrics, chosen)


def recorded_dir(metrics: dict, key: str) -> Path:
    """A stage directory that a run's metrics.json names (absolute; a relative one, written before paths were
    recorded whole, is relative to where that run was launched), checked to be there."""
    path = Path(metrics[key])
    if not path.is_dir():
        stage = key.removeprefix("dir_")
        where = "" if path.is_absolute() else (" (a relative path, from the directory the run was launched in: run "
                                               "this there)")
        raise UserError(f"the run's {stage} folder {path} is not there{where}; if its cache was deleted, rerun the "
                        "run's command to rebuild it (python -m qsharp_exp with the overrides in its "
                        ".hydra/overrides.yaml).")
    return path
