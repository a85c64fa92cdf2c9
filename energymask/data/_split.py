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


def named_splits(dataset: Dataset, fractions: dict[str, float], seed: int,
                 source: str) -> dict[str, Subset | None]:
    """:func:`split_dataset` by name; the last name takes the remainder.

    A split whose fraction is 0 is None (not asked for); a split asked for that
    gets no sample raises ``ValueError`` naming ``source`` (so an evaluation never
    meets an empty split).
    """
    names = list(fractions)
    subsets = split_dataset(dataset, tuple(fractions.values()), seed)
    out: dict[str, Subset | None] = {}
    for name, subset in zip(names, subsets, strict=True):
        asked = fractions[name] > 0 or name == names[-1]
        if asked and len(subset) == 0:
            raise ValueError(
                f"the {name} split of {source} is empty: {len(dataset)} images x "
                f"{fractions[name]:g} rounds down to 0; add images or raise the {name} share")
        out[name] = subset if asked else None
    return out
