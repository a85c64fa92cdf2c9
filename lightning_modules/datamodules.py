"""DataModules: in-memory tensors or datasets."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

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


class TensorDataModule(pl.LightningDataModule):
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
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, but got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, but got {num_workers!r}")
        if train is None:
            raise ValueError("train must be given, but got None")
        self.train_set = _as_dataset("train", train)
        self.val_set = _as_dataset("val", val)
        self.test_set = _as_dataset("test", test)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle, self.seed = shuffle, seed

    def _loader(self, dataset: Dataset | None, name: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise ValueError(f"no {name} split was given to TensorDataModule")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", self.shuffle)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, "val")  # [] = no val

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")


__all__ = ["TensorDataModule"]
