"""The published train/validation split of GSM8K train and MATH train (docs/method.md, section 3)."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import TypeVar

import numpy as np

from qsharp_exp.config import ConfigError

T = TypeVar("T")


def reference_split(num_examples: int, seed: int = 47, val_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) exactly as the reference code draws them:
    `numpy.random.seed(47); perm = numpy.random.permutation(N); validation = perm[:int(0.1 * N)]`.
    Uses a private RandomState seeded the same way, so the global numpy state is left alone."""
    perm = np.random.RandomState(seed).permutation(num_examples)
    cut = int(val_fraction * num_examples)
    return sorted(perm[cut:].tolist()), sorted(perm[:cut].tolist())


def draw_distinct_splits(sizes: dict[str, int], stream: Callable[[str], str], draw: Callable[[random.Random], T],
                         key: Callable[[T], Hashable], hint: str) -> dict[str, list[T]]:
    """Generated splits, in the order of `sizes`, each from its own random stream (`stream(split)` seeds
    it) and skipping anything drawn before: no item is in two splits, and a split depends only on the
    seed, its own size and the sizes of the splits drawn before it. `hint` says how to make room when
    the space of distinct items runs out."""
    seen: set[Hashable] = set()
    splits: dict[str, list[T]] = {}
    for split, size in sizes.items():
        rng = random.Random(stream(split))
        items: list[T] = []
        for _ in range(50 * size + 1000):
            if len(items) == size:
                break
            item = draw(rng)
            if key(item) not in seen:
                seen.add(key(item))
                items.append(item)
        if len(items) < size:
            raise ConfigError(f"could not draw {size} distinct problems for split '{split}': {hint}")
        splits[split] = items
    return splits
