"""Tasks: what differs between star-graph and the math datasets lives here.

Every module of this package registers its tasks (`@register_task`, tasks/base.py) when imported; the
lookups below import them all first, so a new task is one module here plus one `conf/task/<name>.yaml`.
"""

from __future__ import annotations

import importlib
import pkgutil

from qsharp_exp.config import TaskConfig
from qsharp_exp.tasks.base import TASKS, Problem, Task, register_task


def _import_task_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def task_config_class(name: str) -> type[TaskConfig]:
    """The schema of task `name`'s config section."""
    _import_task_modules()
    return TASKS[name].config


def build_task(cfg: TaskConfig) -> Task:
    task_config_class(cfg.name)
    return TASKS[cfg.name].build(cfg)


__all__ = ["Problem", "Task", "TASKS", "build_task", "register_task", "task_config_class"]
