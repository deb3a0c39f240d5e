"""Seals on what one job leaves in a cache for another to pick up (resume batches, training checkpoints).

A seal is an HMAC-SHA256 over a file's place in its stage (`<key>.resume/...`, so it is bound to the stage
key and the batch's position) and its contents, keyed by the user's cache secret. A job accepts work kept by
an interrupted job only when its seal verifies: a file planted or edited by anyone without the secret is
discarded and computed again (docs/reliability.md, "Who may write a cache").

The secret: `$QSHARP_CACHE_SECRET` if set (give every job of a sweep the same one when they run as
different users or on machines without a shared home), else a random one created on first use in
`$XDG_CONFIG_HOME/qsharp_exp/cache_secret` (default `~/.config/...`), readable by its owner only.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from qsharp_exp.files import file_digest

log = logging.getLogger(__name__)

SECRET_ENV = "QSHARP_CACHE_SECRET"
RESUME_SUFFIX = ".resume"


def secret_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "qsharp_exp" / "cache_secret"


def _secret() -> bytes:
    if value := os.environ.get(SECRET_ENV):
        return value.encode()
    return _secret_from_file(secret_file())


@functools.cache
def _secret_from_file(path: Path) -> bytes:
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(fresh, path)  # whole or not at all: a job that races this one reads the winner's
            except FileExistsError:
                pass
            finally:
                fresh.unlink()
        value = path.read_bytes().strip()
        if value:
            return value
    except OSError as err:
        log.warning("cannot keep a cache secret in %s (%s): work kept for a resume is sealed for this job only; "
                    "set %s to share it across jobs", path, err.strerror or err, SECRET_ENV)
    return secrets.token_hex(32).encode()


def _place(path: Path) -> bytes:
    """Where a file sits, from its stage's `<key>.resume` directory on (the whole path outside one)."""
    parts = path.absolute().parts
    starts = [i for i, part in enumerate(parts) if part.endswith(RESUME_SUFFIX)]
    return "/".join(parts[starts[-1]:] if starts else parts).encode()


def seal(path: Path, data: bytes) -> str:
    """The seal of `data` kept at `path`."""
    return hmac.new(_secret(), _place(path) + b"\0" + data, hashlib.sha256).hexdigest()


def verifies(path: Path, data: bytes, claimed: object) -> bool:
    return isinstance(claimed, str) and hmac.compare_digest(seal(path, data), claimed)


def tree_contents(directory: Path) -> bytes:
    """What a directory holds, as one string of bytes to seal: each file's relative path and SHA-256, in order.
    A symbolic link inside makes it unsealable (b"")."""
    lines = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            return b""
        if path.is_file():
            lines.append(f"{path.relative_to(directory)} {file_digest(path)}")
    return "\n".join(lines).encode()
