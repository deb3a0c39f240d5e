"""Tasks: what differs between star-graph and the math datasets lives here."""

from qsharp_exp.config import TaskConfig
from qsharp_exp.tasks.base import Problem, Task
from qsharp_exp.tasks.star_graph import StarGraphTask


def build_task(cfg: TaskConfig) -> Task:
    if cfg.name == "star_graph":
        return StarGraphTask(cfg)
    raise ValueError(f"unknown task {cfg.name!r}")


__all__ = ["Problem", "Task", "build_task"]
