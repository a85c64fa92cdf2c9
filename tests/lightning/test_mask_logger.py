"""MaskLoggerCallback: PNG files and TensorBoard figures of the keep masks, under both packages."""

from __future__ import annotations

import glob
import importlib
import os

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from energymask.lightning_modules.ersm_callback import ERSMCallback
from energymask.lightning_modules.mask_logger import MaskLoggerCallback, figure_writers

torch.set_num_threads(1)
PACKAGES = ["lightning.pytorch", "pytorch_lightning"]


def module(package="pytorch_lightning"):
    """A user's LightningModule on ``package``."""

    class Net(importlib.import_module(package).LightningModule):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Net()


def loader():
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 1, 8, 8, generator=g),
                                    torch.randint(0, 2, (8,), generator=g)), batch_size=4)


def fit(tmp_path, callbacks, max_epochs=2, package="pytorch_lightning"):
    lightning = importlib.import_module(package)
    t = lightning.Trainer(accelerator="cpu", max_epochs=max_epochs,
                          logger=importlib.import_module(f"{package}.loggers")
                          .TensorBoardLogger(tmp_path),
                          enable_progress_bar=False, enable_model_summary=False,
                          enable_checkpointing=False, callbacks=callbacks)
    t.fit(module(package), loader(), loader())
    return t


@pytest.mark.parametrize("package", PACKAGES)
def test_writes_png_and_tensorboard_figures(tmp_path, package):
    logger_cb = MaskLoggerCallback(every_n_epochs=1, num_images=3)
    t = fit(tmp_path, [ERSMCallback("features.0", bias_init=0.0), logger_cb], package=package)
    assert [os.path.basename(p) for p in logger_cb.saved] == ["epoch=0.png", "epoch=1.png"]
    assert all(os.path.getsize(p) > 1000 for p in logger_cb.saved)
    assert os.path.dirname(logger_cb.saved[0]) == os.path.join(t.log_dir, "masks")
    assert logger_cb._images.shape == (3, 1, 8, 8)
    # Readable size: 3 rows x 2 columns of 2-inch panels at 110 dpi.
    from matplotlib.image import imread

    height, width = imread(logger_cb.saved[0]).shape[:2]
    assert height >= 3 * 2 * 100 and width >= 2 * 2 * 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(t.log_dir, size_guidance={"images": 0}).Reload()
    images = events.Images("ersm_masks")
    assert len(images) == 2
    assert images[0].height >= 600 and images[0].width >= 400


def test_figure_writers_are_the_experiments_that_take_figures(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    board = TensorBoardLogger(tmp_path)
    assert figure_writers([CSVLogger(tmp_path), board]) == [board.experiment]
    assert figure_writers([pl.loggers.TensorBoardLogger(tmp_path)])  # the other package's
    assert figure_writers([CSVLogger(tmp_path)]) == []


def test_every_n_epochs(tmp_path):
    logger_cb = MaskLoggerCallback(every_n_epochs=2)
    fit(tmp_path, [ERSMCallback("features.0"), logger_cb], max_epochs=3)
    assert [os.path.basename(p) for p in logger_cb.saved] == ["epoch=1.png"]


def test_needs_ersm_layers(tmp_path):
    with pytest.raises(ValueError, match="found no EnergyMask2d layer"):
        fit(tmp_path, [MaskLoggerCallback()])
    assert not glob.glob(str(tmp_path / "**/*.png"), recursive=True)


def test_bad_settings():
    with pytest.raises(ValueError, match="every_n_epochs must be an int >= 1"):
        MaskLoggerCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_images must be an int >= 1"):
        MaskLoggerCallback(num_images=0)
    with pytest.raises(ValueError, match="dpi must be an int >= 50, but got 10"):
        MaskLoggerCallback(dpi=10)
