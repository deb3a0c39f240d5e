"""Several processes (torchrun), one run: who does what, and how results come together.

Sampling splits its batches across ranks by index and gathers them, so the samples do not depend on
the number of ranks; return-model training is data-parallel through DeepSpeed (ZeRO-2/3); rank 0
alone writes the run's files. With one process every helper here is a no-op.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    # Where the backend takes tensors: NCCL only CUDA tensors of the rank's own GPU, gloo CPU tensors. (The
    # object collectives below place their own tensors: on torch.cuda.current_device() under NCCL.)
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on some rank (keeps ranks in lockstep)."""
        if not self.active:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())


SINGLE = Dist()


def _skip_shm_build() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory op with g++ on first use (about a minute);
    gloo alone suffices, so the build is skipped."""
    module = sys.modules.get("deepspeed.comm.torch")
    if module is not None and hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda: None


def export_slurm_ranks() -> None:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for a task of a SLURM job step
    with several tasks (hydra/launcher=slurm), from submitit (the `slurm` extra)."""
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # each rank picks its GPU by LOCAL_RANK


def init_distributed(device: str) -> Dist:
    """Join the process group that torchrun (or a SLURM job step) describes, through DeepSpeed."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "WORLD_SIZE" not in os.environ:
        export_slurm_ranks()  # only where a job step has several tasks: `sbatch -n1` needs no submitit
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401  (imported so that the shm build can be replaced)

    _skip_shm_build()
    if not torch_dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), f"cuda:{local}")
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size())
