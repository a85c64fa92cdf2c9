"""DataModules: in-memory tensors, cluttered digits, CIFAR-10 pickles, image folders.

The three dataset modules wrap the split functions of :mod:`energymask.data`.
They check the arguments and, for user data, the folder layout **at
construction** (so a command line fails before any training starts, with the
expected layout in the message); the data itself is read or generated in
``setup`` (once; later calls reuse it). Every split is deterministic by ``seed``,
and so is the training shuffle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from energymask.data import cifar10, image_folder
from energymask.data.cluttered_digits import NUM_CLASSES, make_splits

from ._compat import LightningDataModule

Split = Dataset | Sequence[Tensor] | None


def _as_dataset(name: str, split: Split) -> Dataset | None:
    if split is None or isinstance(split, Dataset):
        return split
    if isinstance(split, (tuple, list)) and split and all(isinstance(t, Tensor) for t in split):
        if len({len(t) for t in split}) != 1:
            raise ValueError(f"{name} tensors must have the same length, but got "
                             f"{[len(t) for t in split]}")
        return TensorDataset(*split)
    raise TypeError(f"{name} must be a Dataset, a tuple of tensors (x, y) or None, but got "
                    f"{type(split).__name__}")


class _LoaderMixin:
    """Seeded DataLoaders over ``train_set`` / ``val_set`` / ``test_set``."""

    train_set: Dataset | None
    val_set: Dataset | None
    test_set: Dataset | None
    batch_size: int
    num_workers: int
    shuffle: bool = True
    seed: int = 0

    @staticmethod
    def _check_loader_args(batch_size: int, num_workers: int) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, but got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, but got {num_workers!r}")

    def _loader(self, dataset: Dataset | None, name: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise ValueError(f"no {name} split was given to {type(self).__name__}")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=generator)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, "train", self.shuffle)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return [] if self.val_set is None else self._loader(self.val_set, "val")  # [] = no val

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._loader(self.test_set, "test")

    def setup(self, stage: str | None = None) -> None:
        """Nothing to build (subclasses build their splits here, once)."""


class TensorDataModule(_LoaderMixin, LightningDataModule):
    """Train / val / test splits given as Datasets or tuples of tensors ``(x, y)``.

    Args:
        train, val, test: the splits; val and test may be None.
        batch_size: Default: 32.
        num_workers: DataLoader workers. Default: 0.
        shuffle: shuffle the training split (seeded by ``seed``). Default: True.
        seed: seed of the training shuffle. Default: 0.
    """

    def __init__(self, train: Split, val: Split = None, test: Split = None,
                 batch_size: int = 32, num_workers: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        self._check_loader_args(batch_size, num_workers)
        if train is None:
            raise ValueError("train must be given, but got None")
        self.train_set = _as_dataset("train", train)
        self.val_set = _as_dataset("val", val)
        self.test_set = _as_dataset("test", test)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle, self.seed = shuffle, seed


class _SplitsDataModule(_LoaderMixin, LightningDataModule):
    """Builds ``{"train", "val", "test"}`` with :meth:`make_splits` at the first ``setup``.

    Subclasses set ``num_classes``, ``in_channels`` and ``has_object_masks``.
    """

    num_classes: int
    in_channels: int
    has_object_masks: bool = False

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self._check_loader_args(batch_size, num_workers)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_set = self.val_set = self.test_set = None
        self._built = False

    def make_splits(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._built:
            return
        splits = self.make_splits()
        self.train_set, self.val_set, self.test_set = splits["train"], splits["val"], splits["test"]
        self._built = True


class ClutteredDigitsDataModule(_SplitsDataModule):
    """Cluttered digits (:func:`energymask.data.make_splits`); no download.

    Batches are ``(image (B, 1, H, W), label (B,), object_mask (B, 1, H, W))``.

    Args:
        num_train, num_val, num_test: images per split. Default: 5000, 1000, 1000.
        spurious: class-correlated backgrounds in train / val, shuffled in test.
            Default: False.
        spurious_strength: see :func:`~energymask.data.make_splits`. Default: 0.9.
        seed: seed of the splits and of the training shuffle. Default: 0.
        batch_size: Default: 64.
        num_workers: DataLoader workers. Default: 0.
        **kwargs: passed to :func:`~energymask.data.generate_cluttered_digits`
            (``canvas``, ``num_clutter``, ...).
    """

    num_classes = NUM_CLASSES
    in_channels = 1
    has_object_masks = True

    def __init__(self, num_train: int = 5000, num_val: int = 1000, num_test: int = 1000,
                 spurious: bool = False, spurious_strength: float = 0.9, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0, **kwargs: Any) -> None:
        super().__init__(batch_size, num_workers, seed)
        for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int, but got {n!r}")
        self.sizes = (num_train, num_val, num_test)
        self.spurious, self.spurious_strength = spurious, spurious_strength
        self.kwargs = kwargs

    def make_splits(self) -> dict[str, Dataset]:
        return make_splits(*self.sizes, spurious=self.spurious,
                           spurious_strength=self.spurious_strength, seed=self.seed,
                           **self.kwargs)


class CIFAR10DataModule(_SplitsDataModule):
    """CIFAR-10 from its local python-pickle folder (:func:`energymask.data.cifar10_splits`).

    Batches are ``(image (B, 3, 32, 32) in [0, 1], label (B,))``. Raises ``ValueError``
    at construction when ``root`` is not a ``cifar-10-batches-py`` folder; no download.

    Args:
        root: the ``cifar-10-batches-py`` folder.
        val_fraction: share of the training batches held out for validation. Default: 0.1.
        seed, batch_size, num_workers: as in :class:`ClutteredDigitsDataModule`.
        transform: callable on each (3, 32, 32) image. Default: None.
    """

    num_classes = 10
    in_channels = 3

    def __init__(self, root: str | Path, val_fraction: float = 0.1, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0, transform=None) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = Path(root)
        needed = (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES)
        missing = [f for f in needed if not (self.root / f).is_file()]
        if not self.root.is_dir() or missing:
            why = "is not a folder" if not self.root.is_dir() else f"lacks {missing}"
            raise ValueError(f"root must be {cifar10.LAYOUT}, but {str(self.root)!r} {why}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), but got {val_fraction}")
        self.val_fraction, self.transform = val_fraction, transform

    def make_splits(self) -> dict[str, Dataset]:
        return cifar10.cifar10_splits(self.root, self.val_fraction, self.seed, self.transform)


class ImageFolderDataModule(_SplitsDataModule):
    """An image-folder tree, one class per sub-folder (:func:`energymask.data.image_folder_splits`).

    Batches are ``(image (B, C, H, W) in [0, 1], label (B,))``; one tree is split into
    train / val / test by ``seed``. The classes (sorted sub-folder names) are read at
    construction, which raises ``ValueError`` with the expected layout when ``root``
    is missing or has no sub-folder; images are scanned in ``setup``, where an
    unreadable file is skipped with a warning (see :class:`energymask.data.ImageFolder`).

    Args:
        root: the tree's root folder.
        size: images are resized to ``(H, W)``. Default: (64, 64).
        mode: ``"RGB"`` (C = 3) or ``"L"`` (C = 1). Default: "RGB".
        val_fraction, test_fraction: shares of the images. Default: 0.1, 0.1.
        seed, batch_size, num_workers: as in :class:`ClutteredDigitsDataModule`.
    """

    def __init__(self, root: str | Path, size: tuple[int, int] = (64, 64), mode: str = "RGB",
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', but got {mode!r}")
        if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
            raise ValueError("val_fraction and test_fraction must be >= 0 with a sum below 1, "
                             f"but got {val_fraction} and {test_fraction}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root must be a folder laid out as {image_folder.LAYOUT}, "
                             f"but {str(self.root)!r} is not a folder")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"root must be laid out as {image_folder.LAYOUT}, "
                             f"but {str(self.root)!r} has no class sub-folders")
        self.size, self.mode = tuple(size), mode
        self.fractions = (val_fraction, test_fraction)
        self.num_classes = len(self.classes)
        self.in_channels = 3 if mode == "RGB" else 1

    def make_splits(self) -> dict[str, Dataset]:
        return image_folder.image_folder_splits(self.root, *self.fractions, seed=self.seed,
                                                size=self.size, mode=self.mode)


__all__ = [
    "CIFAR10DataModule",
    "ClutteredDigitsDataModule",
    "ImageFolderDataModule",
    "TensorDataModule",
]
