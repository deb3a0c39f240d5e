"""Named extension points: guidance rules (`algo=cd`), tasks (`task=math`) and policy trainers (`algo=dpo`).

Each kind is one `Registry` filled by a decorator where the entry is defined, so a new rule, task or trainer
is one module plus one YAML; the config checks, the report and the reproduction script list what is
registered instead of a copy of the names. Looking up a name that is not registered is a config error that
names the setting and the registered names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from qsharp_exp.config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, setting: str) -> None:
        self.kind = kind  # what an entry is, for messages: "guidance rule"
        self.setting = setting  # the config key that names an entry: "algo.name"
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        """Register `entry` as `name`; a second, different entry under the same name is a programming error."""
        if name in self._entries and self._entries[name] != entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds what it decorates as `name` and returns it unchanged."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def remove(self, name: str) -> None:
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"{self.setting}={name!r} is not supported (no such {self.kind}): use one of "
                              f"{', '.join(self._entries)}.")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())
