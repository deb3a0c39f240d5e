"""The one optimisation loop of every training stage: plain PyTorch, or DeepSpeed ZeRO for the return model.

`make_trainer` builds AdamW with linear warm-up and cosine decay to 10% of lr. Both trainers keep the
same contract: `update(loss)` (backward, gradient clipping at 1, AdamW, schedule), `save(dir, step,
state)` / `load(dir, step)` of a resumable checkpoint `global_step_N/` plus a `latest` file, and
`full_parameters()` to read the whole model (gathered under ZeRO-3) for export.

A checkpoint is sealed when written (`global_step_N.seal`, sealing.py) and `latest_step` offers only one
whose seal verifies, so a checkpoint planted in a shared cache is never loaded; the plain trainer's own
file is read with `weights_only=True` besides, which unpickles tensors and plain containers only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qsharp_exp import sealing
from qsharp_exp.files import write_text
from qsharp_exp.hardware import Hardware
from qsharp_exp.progress import LiveLog, ignore_point

log = logging.getLogger(__name__)

LATEST = "latest"


@dataclass(frozen=True)
class TrainingEnv:
    """Where a training loop runs: the hardware, the seed of its random streams, whether it shows a progress bar,
    and where each point of its curve goes as it is measured (the run's tracker, progress.LiveLog)."""

    hw: Hardware
    seed: int
    show_progress: bool = True
    live: LiveLog = ignore_point


def deepspeed_config(hw: Hardware, micro_batch_size: int) -> dict[str, Any]:
    """DeepSpeed's config, generated from the Hydra hardware config (no hand-kept JSON)."""
    zero: dict[str, Any] = {"stage": hw.cfg.zero_stage}
    if hw.cfg.offload:
        zero["offload_param"] = {"device": "cpu"}
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": hw.bf16},
        "zero_optimization": zero,
        # Our torch AdamW, not DeepSpeed's JIT-compiled ones: the same optimiser with or without ZeRO.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def latest_step(directory: Path) -> int | None:
    """The step of the newest checkpoint kept in `directory` that this user's jobs wrote (its seal verifies);
    None when there is none, and a warning when one is there but does not verify (it is not used)."""
    path = directory / LATEST
    if not path.is_file() or path.is_symlink():
        return None
    text = path.read_text().strip()
    step = text.removeprefix("global_step_")
    if not step.isdigit():
        log.warning("ignoring %s (%r names no checkpoint): training starts from the beginning", path, text[:40])
        return None
    target = directory / f"global_step_{step}"
    seal_file = target.with_name(f"{target.name}.seal")
    claimed = seal_file.read_text().strip() if seal_file.is_file() and not seal_file.is_symlink() else None
    if not target.is_dir() or target.is_symlink() or not sealing.verifies(target, sealing.tree_contents(target),
                                                                           claimed):
        log.warning("ignoring the checkpoint %s: its seal does not verify (written by a job without this user's "
                    "cache secret, or changed since): training starts from the beginning", target)
        return None
    return int(step)


def _seal_and_point(directory: Path, step: int, keep: int) -> None:
    """After every rank has written `global_step_<step>`: seal it, point `latest` at it, and remove all but the
    newest `keep` checkpoints (0 keeps all)."""
    target = directory / f"global_step_{step}"
    write_text(target.with_name(f"{target.name}.seal"), sealing.seal(target, sealing.tree_contents(target)))
    write_text(directory / LATEST, f"global_step_{step}")
    steps = sorted(int(p.name.removeprefix("global_step_")) for p in directory.glob("global_step_*")
                   if p.is_dir() and not p.is_symlink() and p.name.removeprefix("global_step_").isdigit())
    for old in steps[:-keep] if keep else []:
        stale = directory / f"global_step_{old}"
        stale.with_name(f"{stale.name}.seal").unlink(missing_ok=True)
        shutil.rmtree(stale)


def adamw_with_schedule(
    params, lr: float, weight_decay: float, warmup_steps: int, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW, linear warm-up, cosine decay to 10% of lr. (transformers' get_cosine_with_min_lr_schedule_with_warmup
    has the same cosine but starts its warm-up at 0, a first step that learns nothing, one step behind this one
    throughout the warm-up: every cached stage and measured figure would change, so this one stays.)"""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class PlainTrainer:
    def __init__(self, model: torch.nn.Module, optimizer, schedule, hw: Hardware, keep: int = 0) -> None:
        self.module, self.optimizer, self.schedule, self.hw = model, optimizer, schedule, hw
        self.keep = keep  # checkpoints kept (the newest); 0: all

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()

    def save(self, directory: Path, step: int, state: dict) -> None:
        if not self.hw.dist.is_main:
            return
        target = directory / f"global_step_{step}"
        target.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(), "client": state}, target / "state.pt")
        _seal_and_point(directory, step, self.keep)

    def load(self, directory: Path, step: int) -> dict:
        saved = torch.load(directory / f"global_step_{step}" / "state.pt", weights_only=True)
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        return saved["client"]

    def full_parameters(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class DeepSpeedTrainer:
    def __init__(self, model: torch.nn.Module, optimizer, schedule, hw: Hardware, micro_batch_size: int,
                 keep: int = 0) -> None:
        import deepspeed

        self.hw, self.keep = hw, keep
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                               config=deepspeed_config(hw, micro_batch_size))
        self.module = self.engine.module

    def update(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def save(self, directory: Path, step: int, state: dict) -> None:
        self.engine.save_checkpoint(str(directory), tag=f"global_step_{step}", client_state={"client": state},
                                    save_latest=False)
        self.hw.dist.barrier()  # every rank's shard is written
        if self.hw.dist.is_main:
            _seal_and_point(directory, step, self.keep)
        self.hw.dist.barrier()

    def load(self, directory: Path, step: int) -> dict:
        _, client = self.engine.load_checkpoint(str(directory), tag=f"global_step_{step}")
        return client["client"]

    def full_parameters(self) -> contextlib.AbstractContextManager:
        if self.hw.cfg.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)


Trainer = PlainTrainer | DeepSpeedTrainer


@dataclass(frozen=True)
class OptimizerPlan:
    """AdamW's settings and the length of its schedule (adamw_with_schedule)."""

    lr: float
    weight_decay: float
    warmup_steps: int
    total_steps: int


def make_trainer(model: torch.nn.Module, hw: Hardware, plan: OptimizerPlan, data_parallel_batch: int | None = None,
                 keep: int = 0) -> Trainer:
    """AdamW with its schedule around `model`. With `data_parallel_batch` (the per-rank micro-batch) and
    hardware.zero_stage set, under DeepSpeed ZeRO (the return model); otherwise plain PyTorch on every
    rank (pretraining and the policy baselines, which every rank runs alike). `keep`: checkpoints kept."""
    optimizer, schedule = adamw_with_schedule(model.parameters(), plan.lr, plan.weight_decay, plan.warmup_steps,
                                              plan.total_steps)
    if data_parallel_batch is not None and hw.cfg.zero_stage:
        return DeepSpeedTrainer(model, optimizer, schedule, hw, data_parallel_batch, keep)
    return PlainTrainer(model, optimizer, schedule, hw, keep)


def shard_for_inference(model: torch.nn.Module, hw: Hardware) -> torch.nn.Module:
    """A frozen model partitioned with ZeRO-3 across the ranks; its forward gathers parameters, so all
    ranks must call it together (decoding's `lockstep`)."""
    import deepspeed

    zero: dict[str, Any] = {"stage": 3}
    if hw.cfg.offload:
        zero["offload_param"] = {"device": "cpu"}
    config = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": hw.bf16}, "zero_optimization": zero,
              "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.module.eval()
    return engine.module
