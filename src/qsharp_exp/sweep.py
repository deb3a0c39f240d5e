"""A sweep (`python -m qsharp_exp -m ...`) checks every job's config before its first job starts: Hydra's
launcher runs jobs one after another, so a bad value in the fifth job would otherwise stop an overnight sweep
after four finished runs, and name only the first of its errors."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from qsharp_exp.compose import compose_config
from qsharp_exp.config import ConfigError

MULTIRUN = ("-m", "--multirun")
# Flags after which Hydra composes another config, or composes none: the jobs are left for Hydra to compose.
OTHER_CONFIG = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-c", "--cfg", "--help",
                "-h", "--hydra-help", "-i", "--info", "--shell-completion", "-sc", "-p", "--package")


def sweep_errors(argv: list[str]) -> list[str]:
    """One line per job of the sweep `argv` whose config is invalid, naming the job by its swept values;
    empty when every job is valid or `argv` is not a sweep this check understands (Hydra then reports)."""
    flags = [arg.split("=")[0] for arg in argv if arg.startswith("-")]
    if not set(flags) & set(MULTIRUN) or set(flags) & set(OTHER_CONFIG):
        return []
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
    except HydraException:
        return []  # bad override syntax: Hydra's own message says where
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
    errors = []
    for number, job in enumerate(jobs):
        try:
            compose_config(*(o for o in job if not o.startswith("hydra")))
        except (ConfigError, HydraException, OmegaConfBaseException) as err:
            name = " ".join(o for o in job if o.split("=")[0] in swept) or "every job"
            errors.append(f"job {number} ({name}): {str(err).strip().splitlines()[0]}")
    return errors
