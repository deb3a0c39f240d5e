"""From Hydra's composed config to a checked RunConfig (config.py): the typed merge, the task's own schema
from the task registry, and the checks that consult the registries or span sections. It sits above the
registries (tasks, guidance rules, policy trainers), so that config.py, which they import, imports none.
"""

from __future__ import annotations

import contextlib
import json
import site
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qsharp_exp.algos import algo_kind
from qsharp_exp.config import ConfigError, FieldError, RunConfig, TaskConfig, as_dict
from qsharp_exp.models.heads import HEADS
from qsharp_exp.tasks import task_config_class


def _conf_dir() -> str:
    """conf/ at the top of the source tree (a checkout, an editable install), else the copy that installing
    the package (not editable) puts under <prefix>/share/qsharp_exp/conf (pyproject.toml's data-files)."""
    source = Path(__file__).resolve().parents[2] / "conf"
    if (source / "config.yaml").is_file():
        return str(source)
    for prefix in (sys.prefix, site.USER_BASE or ""):
        installed = Path(prefix, "share", "qsharp_exp", "conf")
        if (installed / "config.yaml").is_file():
            return str(installed)
    return str(source)  # Hydra's error names it


CONF_DIR = _conf_dir()


def validate(cfg: RunConfig) -> None:
    """Checks that span sections or consult the registries; raises ConfigError naming the key and the fix."""
    algo_kind(cfg.algo.name)  # a registered algorithm
    HEADS[cfg.model.guide.head]  # a registered head kind
    if cfg.algo.guide_round is not None and not 1 <= cfg.algo.guide_round <= cfg.collect.rounds:
        raise ConfigError(
            f"algo.guide_round={cfg.algo.guide_round} must lie in 1..collect.rounds={cfg.collect.rounds} "
            "(or be null for the last round)."
        )


def _instantiate(node: DictConfig, key: str) -> Any:
    """The dataclass of a merged, typed node, built bottom-up so that a section's FieldError can be
    re-raised with its full key."""
    cls = OmegaConf.get_type(node)
    values = {}
    for f in fields(cls):
        value = node[f.name]
        child = f"{key}.{f.name}" if key else f.name
        if isinstance(value, DictConfig) and is_dataclass(OmegaConf.get_type(value)):
            values[f.name] = _instantiate(value, child)
        elif isinstance(value, DictConfig | ListConfig):
            values[f.name] = OmegaConf.to_container(value, resolve=True)
        else:
            values[f.name] = value
    try:
        return cls(**values)
    except FieldError as err:
        raise err.under(key) from None


def _merge_error(err: OmegaConfBaseException) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    reason = str(getattr(err, "msg", err)).splitlines()[0]
    return ConfigError(f"config key '{key}': {reason}. "
                       "Check the spelling against conf/ (python -m qsharp_exp --cfg job shows every key).")


def load_run_config(cfg: DictConfig) -> RunConfig:
    """Merge the composed config into the typed schema (the task's own schema for `task`) and validate it."""
    schema = OmegaConf.structured(RunConfig)
    try:
        task_name = OmegaConf.select(cfg, "task.name", default=TaskConfig.name)
        schema.task = OmegaConf.structured(task_config_class(task_name))
        merged = OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as err:
        raise _merge_error(err) from None
    run_cfg: RunConfig = _instantiate(merged, "")
    validate(run_cfg)
    return run_cfg


def register_schema() -> None:
    """Put every key of the schema, with its default, into Hydra's config store as `schema`, the first entry
    of conf/config.yaml's defaults: the composed config then holds every key, so a plain override
    (`eval.reward_model=false`) works for each, not only for keys a YAML file sets. Values are checked by
    `load_run_config`, not by Hydra. A task's own keys are declared by its YAML file."""
    ConfigStore.instance().store(name="schema", node=json.loads(json.dumps(as_dict(RunConfig()))))


def compose_config(*overrides: str) -> RunConfig:
    """The checked config of `python -m qsharp_exp <overrides>`, composed from conf/ (a ConfigError names a bad
    key or value; Hydra's errors name a missing group option)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schema()
    running = GlobalHydra.instance().is_initialized()  # inside a running app (a sweep's check): conf/ is loaded
    with contextlib.nullcontext() if running else initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return load_run_config(compose(config_name="config", overrides=list(overrides)))
