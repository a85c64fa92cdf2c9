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

Random augmentation resumes exactly too. A transform draws from the process's
generators (torch's global CPU generator, Python's ``random``, NumPy's global
``np.random``): in the main process these advance with training, in a worker
with the batches that worker happened to load, which a checkpoint does not keep
and a mid-epoch resume changes (the first batch after a resume goes to worker
0). So every item of an epoch is loaded with those three generators seeded by
``(seed, epoch, index)`` (:func:`item_seed`) and restored afterwards
(:class:`SeededItems`, :func:`seeded_generators`): an item's augmentation is a
function of the seed, the epoch and the item alone, the same in a straight run,
a resumed run and with any ``num_workers`` or batch size; the training's own
draws in the main process are not disturbed. The workers' base seed comes from
the loader's ``generator`` (one is made when none is given), re-seeded by
``(seed, epoch)`` at each pass, so anything else a worker draws is derived from
``(seed, epoch, worker)``.

Mid-epoch resume is for one process: under DDP use a ``DistributedSampler``
(its order is also a function of seed and epoch; the project's datamodules
switch to one), which is exact from end-of-epoch checkpoints without random
transforms. The loader counts batches in the main process, so ``num_workers > 0``
is fine.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

__all__ = ["EpochSampler", "ResumableLoader", "SeededItems", "epoch_seed", "item_seed",
           "seeded_generators"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that depends on ``(seed, epoch)`` only (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends on ``(seed, epoch, index)`` only: one item's random draws."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


@contextmanager
def seeded_generators(seed: int) -> Iterator[None]:
    """Seed torch's global CPU generator, Python's ``random`` and ``np.random`` with
    ``seed`` for the block, then put back their previous states.

    CUDA generators are left alone (data loading draws on the CPU). In a
    DataLoader worker the states are not put back: nothing there draws between
    two items that is not seeded again, and saving and restoring NumPy's state is
    most of the cost (about 0.4 of 0.55 ms per item on the shared CI machine;
    ``benchmarks/bench_item_seeding.py`` prints it).
    """
    in_worker = get_worker_info() is not None
    saved = None if in_worker else (torch.get_rng_state(), random.getstate(),
                                     np.random.get_state())
    words = np.random.SeedSequence(seed).generate_state(4, np.uint32)  # 3 unrelated streams
    torch.default_generator.manual_seed(seed)
    random.seed(int(words[0]) | int(words[1]) << 32)
    np.random.seed(words[2:])
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


class SeededItems(Dataset):
    """``dataset``'s items, each loaded under :func:`seeded_generators` of its :func:`item_seed`.

    Indexed by ``(epoch, index)``: item ``index`` of ``dataset`` with the
    generators seeded by ``(seed, epoch, index)``. A plain int index gives the
    item as ``dataset`` does (Lightning rebuilds loaders with other samplers).

    Args:
        dataset: a map-style dataset.
        seed: int >= 0, as the sampler's.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        epoch, index = key
        with seeded_generators(item_seed(self.seed, epoch, index)):
            return self.dataset[index]


class _EpochTagged:
    """The batches of ``batch_sampler`` with each index as ``(epoch, index)``."""

    def __init__(self, batch_sampler: Any, epoch: int) -> None:
        self.batch_sampler, self.epoch = batch_sampler, epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batch_sampler:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)


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
    ``batch_size``. Its ``dataset`` is then the given one in :class:`SeededItems`
    (each item's random draws seeded by ``(seed, epoch, index)``), and without a
    ``generator`` it makes one (the workers' base seed, re-seeded at each pass).
    ``state_dict()`` is ``{"epoch", "samples"}``: the sampler's
    epoch and the samples yielded in it so far. After ``load_state_dict(state)``,
    the next pass of that same epoch starts after those samples; a pass of any
    other epoch starts at 0 (Lightning moves to the next epoch when the checkpoint
    was written at an epoch's end).

    With another sampler (Lightning rebuilds the loader with a
    ``DistributedSampler`` under DDP, a ``SequentialSampler`` for
    ``overfit_batches``) it is a plain ``DataLoader`` whose ``state_dict()`` is ``{}``.
    """

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any) -> None:
        sampler = kwargs.get("sampler", args[2] if len(args) > 2 else None)
        if isinstance(sampler, EpochSampler):
            dataset = SeededItems(dataset, sampler.seed)
            if kwargs.get("generator") is None and len(args) < 12:  # 12th: generator
                # without one, each pass's base seed for the workers is a global draw
                kwargs["generator"] = torch.Generator()
        super().__init__(dataset, *args, **kwargs)
        if isinstance(self.sampler, EpochSampler) and self.batch_size is None:
            raise ValueError("ResumableLoader needs an int batch_size, but got None")
        self._position = {"epoch": getattr(self.sampler, "epoch", 0), "samples": 0}
        self._resume: dict[str, int] | None = None

    @property
    def _index_sampler(self) -> Any:  # DataLoader's source of the fetched indices
        if isinstance(self.sampler, EpochSampler):
            return _EpochTagged(self.batch_sampler, self.sampler.epoch)
        return super()._index_sampler

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

