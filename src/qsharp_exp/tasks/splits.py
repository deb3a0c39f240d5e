"""The published train/validation split of GSM8K train and MATH train (QSHARP.md section 3)."""

from __future__ import annotations

import numpy as np


def reference_split(num_examples: int, seed: int = 47, val_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) exactly as the reference code draws them:
    `numpy.random.seed(47); perm = numpy.random.permutation(N); validation = perm[:int(0.1 * N)]`.
    Uses a private RandomState seeded the same way, so the global numpy state is left alone."""
    perm = np.random.RandomState(seed).permutation(num_examples)
    cut = int(val_fraction * num_examples)
    return sorted(perm[cut:].tolist()), sorted(perm[:cut].tolist())
