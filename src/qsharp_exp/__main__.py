"""`python -m qsharp_exp [overrides]`: one Hydra entry point for every task, algo, model and hardware."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from qsharp_exp.compose import CONF_DIR, load_run_config, register_schema
from qsharp_exp.config import ConfigError, UserError
from qsharp_exp.failures import blocked_output_dir, disk_error, exit_with, interrupted

register_schema()


def _exit_on_sigterm(signum, frame) -> None:
    # Turn SIGTERM (a scheduler's or `kill`'s stop) into an exception, so that a stage being built
    # removes its temporary directory as it does on Ctrl-C.
    raise SystemExit(128 + signum)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # under torchrun, rank 0 reports
    try:
        run_cfg = load_run_config(cfg)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    # A relative cache_dir is relative to where the command was started, also when hydra.job.chdir moves each job
    # into its own run directory (else no job would reuse another's stages).
    run_cfg.cache_dir = str(Path(get_original_cwd()) / Path(run_cfg.cache_dir).expanduser())
    from qsharp_exp.pipeline import run  # heavy imports only once the config is known to be good

    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on the run ends a stage cleanly on Ctrl-C

    hydra_cfg = HydraConfig.get()
    # All jobs of one sweep share a tracker group: the sweep directory's name.
    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        return run(run_cfg, Path(hydra_cfg.runtime.output_dir), group)
    except UserError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        exit_with(interrupted(), 130)
    except Exception as err:  # a full disk, a path that cannot be written: one line; anything else: raised
        if (message := disk_error(err)) is None:
            raise
        exit_with(message)


def cli() -> None:
    """The checks Hydra's own start-up would turn into tracebacks, then the run (a sweep's jobs are checked by
    sweep.SweepCheck, a Hydra callback, before the first starts)."""
    logging.raiseExceptions = False  # a log file on a full disk: not a traceback per line (the error says why)
    if (message := blocked_output_dir(sys.argv[1:])) is not None:
        exit_with(message)
    main()


if __name__ == "__main__":
    cli()
