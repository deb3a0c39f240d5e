"""Every numeric setting either runs the tiny pipeline at both ends of what validation accepts, with finite
results, or is rejected with a message: the ranges in config.py are what the numerics survive.

Each float leaf of the composed config (generated from the schema, not listed by hand) is tried at a ladder
of values from -1e300 to 1e300 with +-inf and nan; the smallest and the largest that validation accepts are
run through the tiny Q# pipeline of tests/test_stage_keys.py (a policy trainer's settings through the trainer
that reads them). Counts (int leaves) are run at the smallest value accepted: their upper end is bounded by
time and memory, not by the numerics (2**40 training steps are valid and would not end).
"""

from __future__ import annotations

import json
import logging
import math
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from qsharp_exp import pipeline
from qsharp_exp.compose import CONF_DIR, load_run_config, validate
from qsharp_exp.config import RunConfig, UserError
from qsharp_exp.config_view import leaf_paths, value_at
from test_config import compose_cfg
from test_stage_keys import MICRO, unreachable, with_leaf

FLOATS = (-math.inf, -1e300, -1e6, -1.0, -1e-6, 0.0, 1e-300, 1e-6, 0.5, 1.0, 2.0, 1e6, 1e300, math.inf, math.nan)
# Float settings that count (training length in epochs): like the ints, only their lower end is numerics.
COUNTS = ("guide_train.epochs", "guide_train.warm_start_epochs")
INTS = (-(2**40), -1, 0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 2**20, 2**40)


def numeric_kind(cfg: RunConfig, path: str) -> type | None:
    """float or int for a numeric leaf (bool is not one), from its declared type; None otherwise."""
    *parents, name = path.split(".")
    owner = value_at(cfg, ".".join(parents)) if parents else cfg
    declared = typing.get_type_hints(type(owner))[name]
    kinds = set(typing.get_args(declared)) or {declared}
    return float if float in kinds else int if int in kinds and bool not in kinds else None


def accepted(cfg: RunConfig, path: str, kind: type) -> list[float]:
    """The ladder's values that validation takes for the leaf, in order."""
    values = []
    for value in FLOATS if kind is float else INTS:
        try:
            validate(with_leaf(cfg, path, value))
        except (UserError, ValueError):
            continue
        values.append(value)
    return values


def policy_trainer(path: str) -> str | None:
    """The policy trainer whose config sets the leaf `algo.policy.<name>` (conf/algo/*.yaml)."""
    if not path.startswith("algo.policy."):
        return None
    name = path.rsplit(".", 1)[1]
    for yaml in sorted(Path(CONF_DIR, "algo").glob("*.yaml")):
        if name in (OmegaConf.load(yaml).get("policy") or {}):
            return yaml.stem
    return None


def not_finite(run: Path, metrics: dict) -> list[str]:
    """The run's metrics and the points of its stages' training curves that are inf or nan."""
    bad = [f"metrics {k}={v}" for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    for key, directory in metrics.items():
        if key.startswith("dir_") and (Path(directory) / "curve.jsonl").exists():
            for line in (Path(directory) / "curve.jsonl").read_text().splitlines():
                point = json.loads(line)
                bad += [f"{key[4:]} curve {k}={v}" for k, v in point.items()
                        if isinstance(v, float) and not math.isfinite(v)]
    return bad[:3]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[RunConfig, Path]:
    logging.disable(logging.INFO)
    cfg = load_run_config(compose_cfg(*MICRO, "progress=false"))
    root = tmp_path_factory.mktemp("baseline")
    pipeline.run(replace(cfg, cache_dir=str(root / "cache")), root / "run")
    yield cfg, root
    logging.disable(logging.NOTSET)


def run_at(cfg: RunConfig, path: str, value: float, root: Path, baseline_root: Path) -> str | None:
    """What went wrong with the leaf at `value`: None when the run ended with finite results or a UserError."""
    cache = root / "cache"
    for name, directory in unreachable(path, baseline_root).items():
        (cache / name).mkdir(parents=True)
        (cache / name / directory.name).symlink_to(directory)
    threads = torch.get_num_threads()
    try:
        metrics = pipeline.run(replace(cfg, cache_dir=str(cache)), root / "run")
    except UserError:
        return None  # rejected with a message (a run that cannot learn says so)
    except Exception as err:  # noqa: BLE001 - the point: anything else is a defect
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    finally:
        torch.set_num_threads(threads)
    bad = not_finite(root, metrics)
    return "; ".join(bad) if bad else None


@pytest.mark.slow  # minutes: `make test-slow`
def test_every_numeric_setting_at_both_ends_of_its_accepted_range_runs_finite_or_is_rejected(baseline, tmp_path):
    cfg, root = baseline
    defects, tried = [], 0
    for path in leaf_paths(cfg):
        kind = numeric_kind(cfg, path)
        if kind is None:
            continue
        trainer = policy_trainer(path)
        base = load_run_config(compose_cfg(*MICRO, "progress=false", f"algo={trainer}")) if trainer else cfg
        values = accepted(base, path, kind)
        counts = kind is int or path in COUNTS
        ends = sorted({values[0]} if counts else {values[0], values[-1]}) if values else []
        for value in ends:
            tried += 1
            problem = run_at(with_leaf(base, path, value), path, value, tmp_path / f"{path}={value}", root)
            if problem:
                defects.append(f"{path}={value}: {problem}")
    assert not defects, "\n".join(defects)
    assert tried > 80
