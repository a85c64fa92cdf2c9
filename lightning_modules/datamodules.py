"""DataModules: in-memory tensors, cluttered digits, CIFAR-10 pickles, image folders.

The three dataset modules wrap the split functions of :mod:`energymask.data`.
They check the arguments and, for user data, the folder layout **at
construction** (so a command line fails before any training starts, with the
expected layout in the message); the data itself is read or generated in
``setup`` (once; later calls reuse it). Every split is deterministic by ``seed``.

Exact resume: the training order of epoch ``e`` is a function of ``(seed, e)``
(:class:`~energymask.data.EpochSampler`; the Trainer sets the epoch), and the
training loader is a :class:`~energymask.data.ResumableLoader`, whose position
the Trainer saves in every checkpoint, so ``trainer.fit(..., ckpt_path=...)``
continues with the batches a straight run would see, from an end-of-epoch or a
mid-epoch checkpoint (one process; under DDP a ``DistributedSampler`` seeded by
``seed`` orders each epoch by seed and epoch, exact from end-of-epoch checkpoints).

Batches unpack as ``x, y = batch``; ``ClutteredDigitsDataModule(with_masks=True)``
adds the object masks. The dataset modules take ``channels``, ``size``,
``normalize`` and ``transform`` (:class:`~energymask.data.ImageTransform`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from energymask.data import cifar10, image_folder
from energymask.data.cluttered_digits import NUM_CLASSES, make_splits
from energymask.data.resumable import EpochSampler, ResumableLoader
from energymask.data.transforms import Formatted, ImageTransform

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
    def _check_loader_args(batch_size: int, num_workers: int, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, but got {seed!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, but got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, but got {num_workers!r}")

    def _loader(self, dataset: Dataset | None, name: str) -> DataLoader:
        if dataset is None:
            raise ValueError(f"no {name} split was given to {type(self).__name__}")
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by ``(seed, epoch)``, resumable mid-epoch (:mod:`energymask.data.resumable`).

        Under DDP (a Trainer with ``world_size > 1``) each process reads its share
        through a ``DistributedSampler`` seeded by ``seed``, ordered by seed and
        epoch too (exact from end-of-epoch checkpoints).
        """
        self.setup("fit")
        if self.train_set is None:
            raise ValueError(f"no train split was given to {type(self).__name__}")
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            shard = DistributedSampler(self.train_set, trainer.world_size, trainer.global_rank,
                                       shuffle=self.shuffle, seed=self.seed)
            return DataLoader(self.train_set, batch_size=self.batch_size, sampler=shard,
                              num_workers=self.num_workers)
        sampler = EpochSampler(len(self.train_set), self.seed, self.shuffle)
        return ResumableLoader(self.train_set, batch_size=self.batch_size, sampler=sampler,
                               num_workers=self.num_workers, generator=torch.Generator())

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
        self._check_loader_args(batch_size, num_workers, seed)
        if train is None:
            raise ValueError("train must be given, but got None")
        self.train_set = _as_dataset("train", train)
        self.val_set = _as_dataset("val", val)
        self.test_set = _as_dataset("test", test)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle, self.seed = shuffle, seed


class _SplitsDataModule(_LoaderMixin, LightningDataModule):
    """Builds ``{"train", "val", "test"}`` with :meth:`make_splits` at the first ``setup``
    and gives their items in the batch format asked for (:class:`~energymask.data.Formatted`).

    Subclasses set ``num_classes``, ``in_channels`` and ``has_object_masks`` (whether
    the batches carry object masks), and ``items_have_masks`` (whether the
    splits' items are ``(x, y, object_mask)``).
    """

    num_classes: int
    in_channels: int
    has_object_masks: bool = False
    items_have_masks: bool = False

    def __init__(self, batch_size: int, num_workers: int, seed: int,
                 image: ImageTransform | None = None, transform=None,
                 with_masks: bool = False) -> None:
        super().__init__()
        self._check_loader_args(batch_size, num_workers, seed)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be a callable on (C, H, W) images or None, "
                            f"but got {type(transform).__name__}")
        if with_masks and not self.items_have_masks:
            raise ValueError(f"with_masks=True needs a dataset with object masks, but "
                             f"{type(self).__name__} has none")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.image, self.transform = image, transform
        self.has_object_masks = with_masks
        if image is not None and image.channels is not None:
            self.in_channels = image.channels
        self.train_set = self.val_set = self.test_set = None
        self._built = False

    def make_splits(self) -> dict[str, Dataset | None]:
        raise NotImplementedError

    def _format(self, split: Dataset | None) -> Dataset | None:
        as_is = (self.image is None and self.transform is None
                 and self.has_object_masks == self.items_have_masks)
        if split is None or as_is:
            return split
        return Formatted(split, self.image, self.transform, self.has_object_masks)

    def setup(self, stage: str | None = None) -> None:
        if self._built:
            return
        splits = {k: self._format(v) for k, v in self.make_splits().items()}
        self.train_set, self.val_set, self.test_set = splits["train"], splits["val"], splits["test"]
        self._built = True


def _image_transform(channels, size, normalize) -> ImageTransform | None:
    if channels is None and size is None and normalize is None:
        return None
    return ImageTransform(channels, size, normalize)


class ClutteredDigitsDataModule(_SplitsDataModule):
    """Cluttered digits (:func:`energymask.data.make_splits`); no download.

    Batches are ``(image (B, C, H, W), label (B,))`` (C = 1, H = W = canvas unless
    ``channels`` / ``size`` say otherwise), and with ``with_masks=True``
    ``(image, label, object_mask (B, 1, H, W))`` for evaluating mask quality.

    Args:
        num_train, num_val, num_test: images per split. Default: 5000, 1000, 1000.
        spurious: class-correlated backgrounds in train / val, shuffled in test.
            Default: False.
        spurious_strength: see :func:`~energymask.data.make_splits`. Default: 0.9.
        seed: seed of the splits and of the training shuffle. Default: 0.
        batch_size: Default: 64.
        num_workers: DataLoader workers. Default: 0.
        with_masks: batches carry the object masks (resized with ``size``). Default: False.
        channels: 1 or 3 (grey repeated, or RGB to luma). Default: the data's own.
        size: int or ``(H, W)``: images resized (bilinear). Default: the data's own.
        normalize: ``(mean, std)`` (floats or one per channel). Default: None.
        transform: your callable on each (C, H, W) image, applied last. Default: None.
        **kwargs: passed to :func:`~energymask.data.generate_cluttered_digits`
            (``canvas``, ``num_clutter``, ...).
    """

    num_classes = NUM_CLASSES
    in_channels = 1
    items_have_masks = True

    def __init__(self, num_train: int = 5000, num_val: int = 1000, num_test: int = 1000,
                 spurious: bool = False, spurious_strength: float = 0.9, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0, with_masks: bool = False,
                 channels: int | None = None, size: int | Sequence[int] | None = None,
                 normalize: tuple | None = None, transform=None, **kwargs: Any) -> None:
        super().__init__(batch_size, num_workers, seed, _image_transform(channels, size, normalize),
                         transform, with_masks)
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

    Batches are ``(image (B, 3, 32, 32) in [0, 1], label (B,))`` (other channels,
    size or normalisation on request). Raises ``ValueError`` at construction when
    ``root`` is not a ``cifar-10-batches-py`` folder; no download.

    Args:
        root: the ``cifar-10-batches-py`` folder.
        val_fraction: share of the training batches held out for validation
            (0: no validation). Default: 0.1.
        seed, batch_size, num_workers: as in :class:`ClutteredDigitsDataModule`.
        channels: 1 or 3 (grey repeated, or RGB to luma). Default: the data's own.
        size: int or ``(H, W)``: images resized (bilinear). Default: the data's own.
        normalize: ``(mean, std)`` (floats or one per channel). Default: None.
        transform: your callable on each (C, H, W) image, applied last. Default: None.
    """

    num_classes = 10
    in_channels = 3

    def __init__(self, root: str | Path, val_fraction: float = 0.1, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0, transform=None,
                 channels: int | None = None, size: int | Sequence[int] | None = None,
                 normalize: tuple | None = None) -> None:
        super().__init__(batch_size, num_workers, seed, _image_transform(channels, size, normalize),
                         transform)
        self.root = Path(root)
        needed = (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES)
        missing = [f for f in needed if not (self.root / f).is_file()]
        if not self.root.is_dir() or missing:
            why = "is not a folder" if not self.root.is_dir() else f"lacks {missing}"
            raise ValueError(f"root must be {cifar10.LAYOUT}, but {str(self.root)!r} {why}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), but got {val_fraction}")
        self.val_fraction = val_fraction

    def make_splits(self) -> dict[str, Dataset | None]:
        return cifar10.cifar10_splits(self.root, self.val_fraction, self.seed)


class ImageFolderDataModule(_SplitsDataModule):
    """An image-folder tree, one class per sub-folder (:func:`energymask.data.image_folder_splits`).

    Batches are ``(image (B, C, H, W), label (B,))``. A tree laid out like CUB-200
    or Oxford Pets in class folders works: one tree split into train / val / test
    by ``seed``, or ``root/train`` and ``root/test`` (val is then ``val_fraction``
    of train). For the ERSM authors' protocol use ``size=224`` (or 448) with the
    backbone's ImageNet ``normalize``. The classes are read at construction, which
    raises ``ValueError`` with the expected layout when ``root`` is missing, has
    no class sub-folder or an empty one; ``setup`` reads every file's header (a
    progress bar on a terminal) and the pixels are decoded as batches are read,
    in ``num_workers`` worker processes (see :class:`energymask.data.ImageFolder`:
    ``bad_images``, ``scan``).

    Args:
        root: the tree's root folder.
        size: int or ``(H, W)``: images are resized (bilinear). Default: (64, 64).
        channels: 3 (RGB) or 1 (grey). Default: 3.
        normalize: ``(mean, std)`` (floats or one per channel). Default: None.
        transform: your callable on each (C, H, W) image, applied last. Default: None.
        val_fraction, test_fraction: shares of the images (test_fraction is not
            used with ``root/test``; 0 means no such split). Default: 0.1, 0.1.
        seed, batch_size, num_workers: as in :class:`ClutteredDigitsDataModule`.
        bad_images: ``"raise"`` or ``"skip"`` files that cannot be decoded. Default: "raise".
        scan: ``"header"`` (decode when read) or ``"decode"`` (every image at
            ``setup``). Default: "header".
        progress: the scan's progress bar: True, False or None (on a terminal,
            after 2 s). Default: None.
    """

    def __init__(self, root: str | Path, size: int | Sequence[int] = (64, 64),
                 channels: int = 3, normalize: tuple | None = None, transform=None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0, bad_images: str = "raise",
                 scan: str = "header", progress: bool | None = None) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, but got {channels!r}")
        self.in_channels = channels
        decoded = ImageTransform(size=size)  # checks size; resizing happens at decoding
        super().__init__(batch_size, num_workers, seed, _image_transform(None, None, normalize),
                         transform)
        image_folder.check_fractions(val_fraction, test_fraction)
        if bad_images not in image_folder.BAD_IMAGES:
            raise ValueError(f"bad_images must be one of {image_folder.BAD_IMAGES}, "
                             f"but got {bad_images!r}")
        if scan not in image_folder.SCANS:
            raise ValueError(f"scan must be one of {image_folder.SCANS}, but got {scan!r}")
        self.root = Path(root)
        folders = image_folder.split_folders(self.root)
        self.classes = [f.name for f in image_folder.class_folders(next(iter(folders.values())))]
        self.size, self.mode = decoded.size, "RGB" if channels == 3 else "L"
        self.fractions = (val_fraction, test_fraction)
        self.bad_images, self.scan, self.progress = bad_images, scan, progress
        self.num_classes = len(self.classes)

    def make_splits(self) -> dict[str, Dataset | None]:
        return image_folder.image_folder_splits(self.root, *self.fractions, seed=self.seed,
                                                size=self.size, mode=self.mode,
                                                bad_images=self.bad_images, scan=self.scan,
                                                progress=self.progress)


__all__ = [
    "CIFAR10DataModule",
    "ClutteredDigitsDataModule",
    "ImageFolderDataModule",
    "TensorDataModule",
]
