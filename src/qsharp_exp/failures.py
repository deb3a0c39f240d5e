"""What a run that stops on the machine's account says: one line naming the path or the stage and the fix,
instead of a traceback (docs/reliability.md). Config and data errors say theirs as UserError."""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

# The stages being built now, innermost last; a stage that fails stays in it (the run ends with it).
BUILDING: list[str] = []

FIXES = {
    errno.ENOSPC: "the disk is full: free space there, or point cache_dir / hydra.run.dir at a disk with room",
    errno.EDQUOT: "the disk quota is used up: free space there, or point cache_dir / hydra.run.dir elsewhere",
    errno.EACCES: "permission denied: make it writable, or point cache_dir / hydra.run.dir elsewhere",
    errno.EPERM: "permission denied: make it writable, or point cache_dir / hydra.run.dir elsewhere",
    errno.EROFS: "the filesystem is read-only: point cache_dir / hydra.run.dir at a writable one",
    errno.ENOTDIR: "a part of this path is a file, not a directory: move the file, or choose another path",
    errno.EISDIR: "this path is a directory where a file belongs: remove it (a stale lock or partial file)",
}
RESUMES = "Finished stages and kept batches stay in the cache: rerun the same command to go on from there."


def disk_error(err: BaseException) -> str | None:
    """The line for a filesystem failure, or None when `err` is none. Writers outside Python's I/O (safetensors)
    raise their own types with the OS's words, so those are recognised by them."""
    code = getattr(err, "errno", None)
    if code is None and "No space left on device" in str(err):
        code = errno.ENOSPC
    if code not in FIXES:
        return None
    where = getattr(err, "filename", None)
    return f"{where or 'a file'}{_during()}: {FIXES[code]}. {RESUMES}"


def interrupted() -> str:
    return f"interrupted{_during()}. {RESUMES}"


def _during() -> str:
    return f" while building {BUILDING[-1]}" if BUILDING else ""


def blocked_output_dir(args: list[str]) -> str | None:
    """Hydra makes the run directory before the app starts: a file on its path would end in its traceback."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or not value:
            continue
        for parent in [Path(value), *Path(value).parents]:
            if parent.exists() and not parent.is_dir():
                return f"{key}={value}: {parent} is a file, not a directory: move it or choose another {key}."
    return None


def exit_with(message: str, code: int = 1) -> None:
    print(f"error: {message}" if code != 130 else message, file=sys.stderr)
    if code == 130:
        # Interrupted inside torch, the interpreter's own shutdown can abort (SIGABRT) on a thread torch still
        # holds; everything worth keeping is on disk already, so flush the logs and leave without it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
