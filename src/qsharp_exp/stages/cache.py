"""Content-addressed stage outputs: a stage's directory is named by a hash of its inputs.

A stage is built in a private temporary directory and renamed into place only when complete,
so an interrupted stage leaves nothing that a rerun would take as done, and a rerun or a sweep
that shares inputs reuses the finished directory. A `resumable` stage also gets a directory
`<key>.resume/` that survives an interruption (it keeps finished batches) and is removed once the
stage is complete.

Jobs that share a cache (a sweep, several SLURM jobs) take an exclusive lock per stage key while they
check and build it (`<key>.lock`, a `flock`): one job builds, the others wait and then reuse its result.
The kernel frees the lock of a killed job, so the next job takes over at once. On NFS, Linux turns
`flock` into an NFS byte-range lock: this needs the NFS lock service (NLM for NFSv3, part of NFSv4),
and a lock held by a job on a machine that died is freed once the NFSv4 server stops waiting for that client
(about 90 s) or when lockd notices the reboot (NFSv3).

At completion a stage records the size and SHA-256 of each of its files (`checksums.json`); reuse
checks them, so a file damaged or cut after the build stops the run with the directory to delete,
instead of being trusted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qsharp_exp.config import UserError
from qsharp_exp.distributed import SINGLE, Dist
from qsharp_exp.failures import BUILDING
from qsharp_exp.files import file_digest

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


class DamagedStageError(UserError):
    """A finished stage's files no longer match the checksums recorded when it was built."""


class UnsafeCacheEntry(UserError):
    """A cache entry that is a symbolic link: writing or deleting through it would touch files outside the cache."""

    def __init__(self, stage: str, path: Path) -> None:
        super().__init__(f"{stage}: {path} is a symbolic link (to {os.readlink(path)}); the cache writes and deletes "
                         f"there, so it never follows one. Remove the link (rm {path}) and rerun; nothing it points "
                         "to was touched.")


def refuse_links(stage: str, path: Path) -> None:
    """Stop before a job writes into or deletes `path` (a directory it owns) when it, or anything in it, is a
    symbolic link."""
    if path.is_symlink():
        raise UnsafeCacheEntry(stage, path)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            if (Path(parent) / name).is_symlink():
                raise UnsafeCacheEntry(stage, Path(parent) / name)


CHECKSUMS = "checksums.json"
DONE = "stage.json"  # written last: a directory with it is complete


def _record_checksums(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    sums = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_digest(p)} for p in files}
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))


def verify_stage(stage: str, directory: Path) -> int:
    """Check a finished stage's files against its checksums; returns the bytes read. Raises
    DamagedStageError naming the directory and how to rebuild it."""

    def damaged(what: str) -> DamagedStageError:
        return DamagedStageError(
            f"{stage}: the cached stage {directory} is damaged ({what}); it was changed after it was built. "
            f"Delete it (rm -rf {directory}) and rerun the same command, which rebuilds it.")

    try:
        sums = json.loads((directory / CHECKSUMS).read_text())
    except (OSError, ValueError):
        raise damaged(f"{CHECKSUMS} is missing or unreadable") from None
    total = 0
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            raise damaged(f"{name} is missing")
        if path.stat().st_size != expected["size"]:
            raise damaged(f"{name} has {path.stat().st_size} bytes, {expected['size']} when built")
        if file_digest(path) != expected["sha256"]:
            raise damaged(f"{name} has other contents than when built")
        total += expected["size"]
    return total


@contextlib.contextmanager
def stage_lock(final: Path, stage: str) -> Iterator[None]:
    """Hold the exclusive lock of one stage key (see the module's docstring); waits while another job holds it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.with_name(f"{final.name}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise UnsafeCacheEntry(stage, path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another job"
            log.info("%s: waiting for %s, which is building %s", stage, holder, final)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)  # frees the lock; the file stays (removing it would race with a waiting job)


NUMERICS, SETTINGS = "numerics", ("version", "config")  # what stages/context.py puts in every key


def same_settings_elsewhere(inputs: dict[str, Any], final: Path) -> tuple[Path, str] | None:
    """A finished stage beside `final` with the same settings and other numerics (device, thread count,
    versions): its directory and how the numerics differ ("cpu_threads 2 here, 1 there"); None if there is none."""
    if NUMERICS not in inputs:
        return None
    ours = json.loads(json.dumps({k: inputs.get(k) for k in SETTINGS}, default=str))
    for done in sorted(final.parent.glob(f"*/{DONE}"))[:1000]:
        try:
            theirs = json.loads((done.parent / "inputs.json").read_text())
        except (OSError, ValueError):
            continue
        if {k: theirs.get(k) for k in SETTINGS} != ours or not isinstance(theirs.get(NUMERICS), dict):
            continue
        here, there = inputs[NUMERICS], theirs[NUMERICS]
        differ = [f"{name} {here.get(name)} here, {there.get(name)} there"
                  + (f": hardware.num_threads={there[name]} reuses it" if name == "cpu_threads" else "")
                  for name in sorted({*here, *there}) if here.get(name) != there.get(name)]
        if differ:
            return done.parent, "; ".join(differ)
    return None


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
            _remove(partial)


def _remove(path: Path) -> None:
    """Delete a directory of the cache; a symbolic link in its place is removed itself, never followed."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def run_stage(
    root: Path, stage: str, inputs: dict[str, Any], build: Callable[..., None], resumable: bool = False,
    dist: Dist = SINGLE,
) -> StageResult:
    """`build(out)` writes the stage's files into `out`; a resumable stage's is `build(out, resume_dir)`.

    Under several processes every rank runs `build` (the work inside may be collective) into its own
    temporary directory, and rank 0's becomes the stage directory; rank 0 holds the stage's lock."""
    entry = Entry(stage, inputs, root / stage / stage_key({"stage": stage, **inputs}))
    key, final = entry.key, entry.final
    started = time.perf_counter()
    with stage_lock(final, stage) if dist.is_main else contextlib.nullcontext():
        if dist.broadcast((final / DONE).exists()):
            damage = None
            if dist.is_main:
                try:
                    checked = verify_stage(stage, final)
                    log.info("%s: reusing %s (%.1f MB checked in %.2f s)", stage, final, checked / 1e6,
                             time.perf_counter() - started)
                except DamagedStageError as err:
                    damage = str(err)
            if (damage := dist.broadcast(damage)) is not None:
                raise DamagedStageError(damage)
            info = json.loads((final / DONE).read_text())
            return StageResult(final, key, time.perf_counter() - started, info["build_seconds"], True)
        return _build(entry, build, resumable, dist, started)


@dataclass(frozen=True)
class Entry:
    """A stage's place in the cache: its name, its inputs, and the directory named by their key."""

    stage: str
    inputs: dict[str, Any]
    final: Path

    @property
    def key(self) -> str:
        return self.final.name


def _build(entry: Entry, build: Callable[..., None], resumable: bool, dist: Dist, started: float) -> StageResult:
    """Build the stage into a temporary directory and move it into place (`started`: when the stage was asked
    for, so that its time includes waiting for the lock)."""
    stage, inputs, key, final = entry.stage, entry.inputs, entry.key, entry.final
    if dist.is_main:
        _remove_abandoned_partials(final)
    dist.barrier()
    tmp = final.with_name(f"{key}.partial-{os.getpid()}")
    _remove(tmp)
    tmp.mkdir(parents=True)
    resume = final.with_name(f"{key}.resume")
    if resumable and (resume.exists() or resume.is_symlink()):
        refuse_links(stage, resume)
    if dist.is_main and (other := same_settings_elsewhere(inputs, final)) is not None:
        log.warning("%s: built again although %s has the same settings: it was built under other numerics (%s), "
                    "which change floats (docs/reliability.md, 'What is in a stage key')", stage, *other)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    log.info("%s: %s %s", stage, "resuming" if resume.exists() else "building", final)
    BUILDING.append(stage)
    try:
        build(tmp, resume) if resumable else build(tmp)
    except BaseException:  # the stage stays in BUILDING: the run is ending with it
        _remove(tmp)
        raise
    BUILDING.pop()
    seconds = dist.broadcast(time.perf_counter() - started)
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
    if dist.is_main:
        (tmp / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True, default=str))
        _record_checksums(tmp)
        (tmp / DONE).write_text(json.dumps({"stage": stage, "build_seconds": round(seconds, 2)}))
        if final.exists() or final.is_symlink():  # a stale, incomplete directory (no stage.json): replace it
            _remove(final)
        os.replace(tmp, final)
    else:
        _remove(tmp)
    dist.barrier()
    if dist.is_main:
        _remove(resume)
    return StageResult(final, key, seconds, seconds, False, peak)
