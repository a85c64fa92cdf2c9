"""Seeded index splits shared by the user-data readers."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset


def split_dataset(dataset: Dataset, fractions: tuple[float, ...], seed: int) -> list[Subset]:
    """Disjoint seeded ``Subset``s of ``dataset`` with sizes ``floor(n * f)``; the last
    subset takes the remainder. ``fractions`` must be non-negative and sum to 1."""
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, but got {fractions}")
    n = len(dataset)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    sizes = [int(n * f) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    out, start = [], 0
    for s in sizes:
        out.append(Subset(dataset, perm[start:start + s]))
        start += s
    return out
