"""What a stage may read of the config: the paths it declares, and nothing else.

A stage declares the config paths its build reads (`reads`); its key hashes their values, and its build
gets a `ConfigView` that answers those paths and raises `UndeclaredInput` on any other. So a stage whose
output depends on a setting either names it in its key or fails on the first run that reads it; it cannot
silently reuse a result made under another value (docs/reliability.md, "Stage keys").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields, is_dataclass, replace
from typing import Any

from qsharp_exp.config import as_dict

# Settings that never change what a stage writes, readable by every build without being keyed: where
# outputs go, what is shown while working, the tracker, how often a long build saves its progress (tests
# show the same result with and without checkpoints, tests/test_return_model.py).
NON_SEMANTIC = frozenset({
    "cache_dir", "progress", "logger", "guide_train.checkpoint_every", "guide_train.keep_checkpoints",
})

# Part of every key through `numerics` (stages/context.py), so every build may read them.
NUMERICS = frozenset({"hardware.device", "hardware.bf16", "hardware.compile_decoding", "hardware.cuda_graphs"})


class UndeclaredInput(AttributeError):
    """A build read a config path that its stage does not declare (and so does not key on)."""


def _covered(path: str, paths: frozenset[str]) -> bool:
    """`path` or one of its ancestors is in `paths`."""
    parts = path.split(".")
    return any(".".join(parts[:i]) in paths for i in range(1, len(parts) + 1))


class ConfigView:
    """The config as one stage's build sees it: declared paths (and the globally readable ones) only.
    A section that is declared whole comes back as the config object itself; a partly declared one as a view."""

    def __init__(self, node: Any, stage: str, declared: frozenset[str], prefix: str = "",
                 overrides: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_declared", declared)
        object.__setattr__(self, "_readable", declared | NON_SEMANTIC | NUMERICS)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_overrides", overrides or {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._overrides:
            return self._overrides[name]
        path = f"{self._prefix}{name}"
        value = getattr(self._node, name)
        if _covered(path, self._readable):
            return value
        if is_dataclass(value):  # a section: what counts is which of its fields the build reads
            return ConfigView(value, self._stage, self._declared, f"{path}.")
        raise UndeclaredInput(f"stage {self._stage} reads {path}, which is not among its declared inputs: add "
                              f"{path!r} to the stage's reads (stages/), so that its key changes with it.")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"stage {self._stage}: the config is read-only inside a stage's build")

    def __repr__(self) -> str:
        return f"ConfigView({self._stage}: {sorted(self._declared)})"


def replaced(section_: Any, **changes: Any) -> Any:
    """`dataclasses.replace` for a config section, whole or seen through a stage's view."""
    if isinstance(section_, ConfigView):
        return ConfigView(section_._node, section_._stage, section_._declared, section_._prefix,
                          {**section_._overrides, **changes})
    return replace(section_, **changes)


def value_at(cfg: Any, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def declared_values(cfg: Any, reads: Iterable[str]) -> dict[str, Any]:
    """The part of a stage's key that comes from the config: each declared path and its value."""
    return {path: as_dict(value_at(cfg, path)) for path in sorted(set(reads))}


def section(cfg: Any, name: str, without: Iterable[str] = ()) -> list[str]:
    """The paths of section `name`'s fields, less `without` (fields its stage does not read)."""
    skip = set(without)
    node = value_at(cfg, name)
    return [f"{name}.{f.name}" for f in fields(node) if f.name not in skip]


def non_semantic(path: str) -> bool:
    """A setting in NON_SEMANTIC, or a leaf under one: it changes no result (which runs compare and ids ignore)."""
    return any(path == name or path.startswith(f"{name}.") for name in NON_SEMANTIC)


def settings(cfg: Any) -> dict[str, Any]:
    """Every leaf's value by dotted path: a run's config.json, which the report compares runs by."""
    return {path: value_at(cfg, path) for path in leaf_paths(cfg)}


def leaf_paths(cfg: Any, prefix: str = "") -> list[str]:
    """Every leaf of a config, as dotted paths (for tests that vary each one)."""
    paths = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            paths += leaf_paths(value, f"{prefix}{f.name}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths
