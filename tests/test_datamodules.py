"""TensorDataModule."""

from __future__ import annotations

import pytest
import torch
from energymask.lightning_modules.datamodules import TensorDataModule
from torch.utils.data import TensorDataset


def test_tensors_and_datasets_give_loaders():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    dm = TensorDataModule((x, y), TensorDataset(x, y), batch_size=4, seed=1)
    first = [b[1].tolist() for b in dm.train_dataloader()]
    again = [b[1].tolist() for b in dm.train_dataloader()]
    assert first == again and sorted(sum(first, [])) == list(range(10))
    assert first != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # shuffled
    assert [b[1].tolist() for b in dm.val_dataloader()][0] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no test split was given"):
        dm.test_dataloader()
    assert TensorDataModule((x, y)).val_dataloader() == []  # Lightning skips validation


def test_bad_input():
    x = torch.zeros(4, 1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TensorDataModule((x, x), batch_size=0)
    with pytest.raises(ValueError, match="num_workers must be an int >= 0"):
        TensorDataModule((x, x), num_workers=-1)
    with pytest.raises(ValueError, match="train must be given"):
        TensorDataModule(None)
    with pytest.raises(ValueError, match="same length"):
        TensorDataModule((x, torch.zeros(3)))
    with pytest.raises(TypeError, match="train must be a Dataset, a tuple of tensors"):
        TensorDataModule("data")
