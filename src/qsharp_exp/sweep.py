"""A sweep (`qsharp-run -m ...`) checks every job's config before its first job starts: Hydra's launcher runs jobs
one after another, so a bad value in the fifth job would otherwise stop an overnight sweep after four finished
runs, and name only the first of its errors.

The check is a Hydra callback (conf/config.yaml, `hydra.callbacks`): `on_multirun_start` receives the sweep's
primary config once it is composed, before the sweeper makes its first job; the jobs are the product of the
sweep's overrides, a preset's own `hydra.sweeper.params` first, then the command line's (as Hydra's basic
sweeper orders them).
"""

from __future__ import annotations

import itertools
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from qsharp_exp.compose import compose_config
from qsharp_exp.config import ConfigError
from qsharp_exp.failures import exit_with


def sweep_jobs(params: dict[str, str], overrides: list[str]) -> tuple[list[list[str]], set[str]]:
    """Each job's overrides, in Hydra's order, and the keys that are swept."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides)
    choices = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    return [list(job) for job in itertools.product(*choices)], swept


def sweep_errors(params: dict[str, str], overrides: list[str]) -> list[str]:
    """One line per job of the sweep whose config is invalid, naming the job by its swept values."""
    jobs, swept = sweep_jobs(params, overrides)
    errors = []
    for number, job in enumerate(jobs):
        try:
            compose_config(*(o for o in job if not o.lstrip("+~").startswith("hydra")))
        except (ConfigError, HydraException, OmegaConfBaseException) as err:
            name = " ".join(o for o in job if o.split("=")[0] in swept) or "every job"
            errors.append(f"job {number} ({name}): {str(err).strip().splitlines()[0]}")
    return errors


class SweepCheck(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
        if errors := sweep_errors(params, list(config.hydra.overrides.task)):
            exit_with(f"{len(errors)} job(s) of this sweep have config errors; none was started:\n"
                      + "\n".join(f"  {e}" for e in errors))
