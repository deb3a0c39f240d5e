"""Tasks: what differs between star-graph and the math datasets lives here."""

from qsharp_exp.config import TaskConfig
from qsharp_exp.tasks.base import Problem, Task


def build_task(cfg: TaskConfig) -> Task:
    if cfg.name == "star_graph":
        from qsharp_exp.tasks.star_graph import StarGraphTask

        return StarGraphTask(cfg)
    if cfg.name == "arithmetic":
        from qsharp_exp.tasks.arithmetic import build_arithmetic_task

        return build_arithmetic_task(cfg)
    if cfg.name in ("gsm8k", "math"):
        from qsharp_exp.tasks.math import build_dataset_task

        return build_dataset_task(cfg)
    raise ValueError(f"unknown task {cfg.name!r}")


__all__ = ["Problem", "Task", "build_task"]
