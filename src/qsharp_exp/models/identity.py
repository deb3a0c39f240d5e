"""What a pretrained model is, for stage keys: not its name. A local directory is named by a checksum of its
files, so a folder rewritten in place is never taken for the old one (and a copy elsewhere reuses the
cache); a hub id by the commit it resolves to, so an updated hub repository is never taken for the old one."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from qsharp_exp.config import UserError


def model_identity(source: str, key: str) -> dict[str, str]:
    """{"sha256": ...} of a local directory's files, or {"hub_id": ..., "revision": <commit>} of a hub id.
    `key` names the setting in messages."""
    path = Path(source)
    if path.is_dir():
        return {"sha256": directory_digest(path.resolve(), _signature(path.resolve()))}
    return {"hub_id": source, "revision": hub_revision(source, key)}


def _signature(directory: Path) -> tuple:
    """Names, sizes and modification times: the digest is recomputed when any of them changes."""
    return tuple((str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns) for p in _files(directory))


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


@cache
def directory_digest(directory: Path, signature: tuple) -> str:
    """SHA-256 over the relative names and contents of the directory's files (weights, config, tokenizer);
    computed once per process for an unchanged `signature`."""
    digest = hashlib.sha256()
    for path in _files(directory):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def hub_revision(hub_id: str, key: str) -> str:
    """The commit `hub_id` resolves to: asked of the hub, or (offline) the snapshot in the local hub cache."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        sha = HfApi().model_info(hub_id).sha
        if sha:
            return sha
    except Exception:  # offline, unreachable, gated: fall back on the local cache
        pass
    try:
        return Path(snapshot_download(hub_id, local_files_only=True)).name
    except Exception:
        raise UserError(f"{key}={hub_id}: its revision on the Hugging Face hub cannot be resolved (the hub is not "
                        "reachable and the model is not in the local hub cache): connect to the hub, or set "
                        f"{key} to a local directory with the model's files.") from None
