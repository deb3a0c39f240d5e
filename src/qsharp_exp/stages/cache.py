"""Content-addressed stage outputs: a stage's directory is named by a hash of its inputs.

A stage is built in a private temporary directory and renamed into place only when complete,
so an interrupted stage leaves nothing that a rerun would take as done, and a rerun or a sweep
that shares inputs reuses the finished directory. A `resumable` stage also gets a directory
`<key>.resume/` that survives an interruption (it keeps finished batches) and is removed once the
stage is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qsharp_exp.distributed import SINGLE, Dist

log = logging.getLogger(__name__)


def stage_key(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageResult:
    path: Path
    key: str
    seconds: float  # spent in this call (about 0 when reused)
    build_seconds: float  # what building it took when it was built
    reused: bool
    peak_gpu_gib: float | None = None  # peak GPU memory allocated while building (CUDA only)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned_partials(final: Path) -> None:
    """Partial directories of processes that were killed (e.g. SIGKILL) and can never finish."""
    if not final.parent.exists():
        return
    for partial in final.parent.glob(f"{final.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def run_stage(
    root: Path, stage: str, inputs: dict[str, Any], build: Callable[..., None], resumable: bool = False,
    dist: Dist = SINGLE,
) -> StageResult:
    """`build(out)` writes the stage's files into `out`; a resumable stage's is `build(out, resume_dir)`.

    Under several processes every rank runs `build` (the work inside may be collective) into its own
    temporary directory, and rank 0's becomes the stage directory."""
    key = stage_key({"stage": stage, **inputs})
    final = root / stage / key
    started = time.perf_counter()
    if dist.broadcast((final / "stage.json").exists()):
        info = json.loads((final / "stage.json").read_text())
        log.info("%s: reusing %s", stage, final)
        return StageResult(final, key, time.perf_counter() - started, info["build_seconds"], True)
    if dist.is_main:
        _remove_abandoned_partials(final)
    dist.barrier()
    tmp = final.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    resume = final.with_name(f"{key}.resume")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    log.info("%s: %s %s", stage, "resuming" if resume.exists() else "building", final)
    try:
        build(tmp, resume) if resumable else build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = dist.broadcast(time.perf_counter() - started)
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
    if dist.is_main:
        (tmp / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True, default=str))
        (tmp / "stage.json").write_text(json.dumps({"stage": stage, "build_seconds": round(seconds, 2)}))
        if final.exists():  # a stale, incomplete directory (no stage.json): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    if dist.is_main:
        shutil.rmtree(resume, ignore_errors=True)
    return StageResult(final, key, seconds, seconds, False, peak)
