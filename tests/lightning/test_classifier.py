"""ImageClassifier and FrozenBackboneERSM on a tiny task."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from energymask.lightning_modules.classifier import FrozenBackboneERSM, ImageClassifier
from energymask.lightning_modules.datamodules import TensorDataModule
from energymask.models import Classifier, small_cnn

torch.set_num_threads(1)


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 16, 16, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    return TensorDataModule((x, y), (x, y), (x, y), batch_size=8)


def trainer(max_epochs=1):
    return pl.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False)


def test_image_classifier_fits_and_logs():
    pl.seed_everything(0)
    module = ImageClassifier(Classifier(small_cnn(widths=(4, 8, 8)), 8, 3), 3, lr=1e-2)
    before = module.model.head.weight.detach().clone()
    t = trainer(2)
    t.fit(module, datamodule=data())
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert key in t.logged_metrics, key
    t.test(module, datamodule=data(), verbose=False)
    assert {"test_loss", "test_acc"} <= set(t.logged_metrics)
    assert not torch.equal(before, module.model.head.weight)
    assert t.lr_scheduler_configs[0].scheduler.T_max == 2


def test_frozen_backbone_trains_only_ersm_and_head():
    pl.seed_everything(0)
    backbone = small_cnn(widths=(4, 8, 8))
    frozen = {n: p.detach().clone() for n, p in backbone.state_dict().items()}
    module = FrozenBackboneERSM(backbone, 8, 3, lr=1e-2, lam=0.1, gamma=0.1, bias_init=0.0)
    ersm_before = module.model.ersm.weight.detach().clone()
    t = trainer(1)
    t.fit(module, datamodule=data())
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, frozen[name])  # BN statistics too
    assert not torch.equal(ersm_before, module.model.ersm.weight)
    assert "train_reg" in t.logged_metrics and "train_keep" in t.logged_metrics
    assert t.logged_metrics["train_reg"] > 0


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(num_classes=1), "num_classes must be an int >= 2"),
    (dict(num_classes=3, lr=0.0), "lr must be > 0"),
    (dict(num_classes=3, weight_decay=-1.0), "weight_decay must be >= 0"),
    (dict(num_classes=3, max_epochs=0), "max_epochs must be None or an int >= 1"),
    (dict(num_classes=3, max_epochs=1.5), "max_epochs must be None or an int >= 1"),
    (dict(num_classes=3, lr=float("nan")), r"lr must be finite, but got nan \(NaN or Inf\)"),
    (dict(num_classes=3, weight_decay=float("inf")), r"weight_decay must be finite, but got inf"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageClassifier(nn.Linear(2, 3), **kwargs)


def test_settings_of_the_wrong_type():
    with pytest.raises(TypeError, match="lr must be a float, but got '0.1'"):
        ImageClassifier(nn.Linear(2, 3), 3, lr="0.1")
