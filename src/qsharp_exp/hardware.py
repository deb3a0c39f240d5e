"""Where tensors live and which precision the forward passes use."""

from __future__ import annotations

import contextlib

import torch

from qsharp_exp.config import HardwareConfig, UserError


class Hardware:
    def __init__(self, cfg: HardwareConfig) -> None:
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise UserError("hardware=gpu needs a CUDA device and none is visible: use hardware=cpu.")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = torch.device(cfg.device)
        self.bf16 = cfg.bf16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
