"""Where tensors live and which precision the forward passes use."""

from __future__ import annotations

import contextlib

import torch

from qsharp_exp.config import HardwareConfig, UserError
from qsharp_exp.distributed import Dist, init_distributed


def check_device(device: str, setting: str, fix: str) -> None:
    """A CUDA device that is not there stops the command before it loads anything."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{setting} needs a CUDA device and none is visible: {fix}.")


class Hardware:
    def __init__(self, cfg: HardwareConfig, dist: Dist | None = None) -> None:
        check_device(cfg.device, f"hardware={cfg.name}", "use hardware=cpu (or hardware.device=cpu)")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.cfg = cfg
        self.dist = dist if dist is not None else init_distributed(cfg.device)
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if cfg.device == "cuda" else cfg.device)
        self.bf16 = cfg.bf16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
