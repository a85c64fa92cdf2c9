"""Shuffled loading that resumes exactly: an order fixed by ``(seed, epoch)``.

A ``DataLoader(shuffle=True, generator=...)`` draws each epoch's order from a
generator that advances from epoch to epoch, so a run restarted from a
checkpoint replays the order of its first epoch instead of the one it stopped
in. Here the order of epoch ``e`` is ``randperm(n)`` seeded by ``(seed, e)``
alone, so a restarted run sees the same batches as a straight one:

- :class:`EpochSampler`: the order; Lightning calls its ``set_epoch(epoch)``
  at the start of every training epoch (as for a ``DistributedSampler``), with
  the epoch counted by the Trainer, which a checkpoint restores. This makes
  resuming from an end-of-epoch checkpoint exact.
- :class:`ResumableLoader`: a ``DataLoader`` with ``state_dict()`` /
  ``load_state_dict()`` (the protocol of Lightning's stateful loading): the
  epoch and how many samples of it were yielded. A Trainer saves it in every
  checkpoint and restores it on resume, and the loader then skips the samples
  already trained on, so resuming from a mid-epoch checkpoint
  (``ModelCheckpoint(every_n_train_steps=...)``) is exact too.

Usage, for your own dataset::

    loader = ResumableLoader(dataset, batch_size=32,
                             sampler=EpochSampler(len(dataset), seed=0))

Mid-epoch resume is for one process: under DDP use a ``DistributedSampler``
(its order is also a function of seed and epoch; the project's datamodules
switch to one), which is exact from end-of-epoch checkpoints. The loader counts
batches in the main process, so ``num_workers > 0`` is fine; the workers' base
seed is drawn from the loader's ``generator`` (when one is given), re-seeded by
``(seed, epoch)`` at each pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["EpochSampler", "ResumableLoader", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that depends on ``(seed, epoch)`` only (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class EpochSampler(Sampler[int]):
    """Indices ``0 .. num_samples - 1``, shuffled by ``(seed, epoch)``.

    Args:
        num_samples: the dataset's length.
        seed: int >= 0. Default: 0.
        shuffle: False yields ``0 .. n - 1`` in order. Default: True.

    Attributes:
        epoch: set by ``set_epoch`` (Lightning calls it at each epoch start). Default: 0.
        start: the next pass yields the epoch's order from this position on (set
            by :class:`ResumableLoader` to resume mid-epoch). Default: 0.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True) -> None:
        for name, value, low in (("num_samples", num_samples, 0), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, but got {value!r}")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The whole order of the current epoch."""
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` that saves and restores its position.

    Takes ``DataLoader``'s arguments, with ``sampler=EpochSampler(...)`` and an int
    ``batch_size``. ``state_dict()`` is ``{"epoch", "samples"}``: the sampler's
    epoch and the samples yielded in it so far. After ``load_state_dict(state)``,
    the next pass of that same epoch starts after those samples; a pass of any
    other epoch starts at 0 (Lightning moves to the next epoch when the checkpoint
    was written at an epoch's end).

    With another sampler (Lightning rebuilds the loader with a
    ``DistributedSampler`` under DDP, a ``SequentialSampler`` for
    ``overfit_batches``) it is a plain ``DataLoader`` whose ``state_dict()`` is ``{}``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.sampler, EpochSampler) and self.batch_size is None:
            raise ValueError("ResumableLoader needs an int batch_size, but got None")
        self._position = {"epoch": getattr(self.sampler, "epoch", 0), "samples": 0}
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):
            yield from super().__iter__()
            return
        epoch = sampler.epoch
        resume, self._resume = self._resume, None
        sampler.start = resume["samples"] if resume and resume["epoch"] == epoch else 0
        if self.generator is not None:
            self.generator.manual_seed(epoch_seed(sampler.seed, epoch))
        self._position = {"epoch": epoch, "samples": sampler.start}
        for batch in super().__iter__():
            samples = min(self._position["samples"] + self.batch_size, len(sampler))
            self._position = {"epoch": epoch, "samples": samples}
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "samples"}``: where the current (or last) pass stands."""
        return dict(self._position) if isinstance(self.sampler, EpochSampler) else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume at ``state_dict``'s position at the next pass of its epoch."""
        if not state_dict and not isinstance(self.sampler, EpochSampler):
            return
        if set(state_dict) != {"epoch", "samples"}:
            raise ValueError("state_dict must have the keys 'epoch' and 'samples', "
                             f"but got {sorted(state_dict)}")
        self._resume = {k: int(v) for k, v in state_dict.items()}
        self._position = dict(self._resume)
