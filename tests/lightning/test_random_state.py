"""RandomState (the owner of the global generators) and the warning about loaders that
cannot be resumed exactly; the exact resume itself is tested in tests/lightning/test_resume.py."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from energymask.data import EpochSampler, ResumableLoader
from energymask.lightning_modules import ERSMCallback, RandomState
from energymask.lightning_modules.random_state import resumable

from helpers import TinyNet

torch.set_num_threads(1)


def test_round_trip_is_weights_only(tmp_path):
    callback = RandomState()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    torch.save(callback.state_dict(), tmp_path / "state.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)  # another state
    callback.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def test_resumable_loaders():
    data = TensorDataset(torch.arange(4))
    assert resumable(ResumableLoader(data, batch_size=2, sampler=EpochSampler(4)))
    assert not resumable(ResumableLoader(data, batch_size=2))  # as rebuilt for DDP
    assert not resumable(DataLoader(data, batch_size=2, shuffle=True))


@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning.pytorch"])
def test_a_plain_dataloader_is_named_once_at_fit_start(package):
    import importlib

    L = importlib.import_module(package)

    class Net(TinyNet, L.LightningModule):  # images without labels, from its own loader
        def __init__(self) -> None:
            super().__init__(width=4, last_relu=True, size=6)

        def training_step(self, batch, batch_idx):
            return self(batch[0]).mean()

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.randn(4, 1, 6, 6)), batch_size=2, shuffle=True)

    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_train_batches=1,
                        callbacks=[ERSMCallback("features.1"), ERSMCallback("features.3"),
                                   RandomState()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Net())
    named = [str(w.message) for w in caught if "cannot be resumed exactly" in str(w.message)]
    assert len(named) == 1, named  # three callbacks, two epochs: said once
    assert "(DataLoader)" in named[0] and "ResumableLoader" in named[0]
