"""load_for_inference: rebuild a model trained with the callbacks and reproduce its outputs."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from energymask.ersm import EnergyMask2d
from energymask.lightning_modules.checkpoint import load_for_inference
from energymask.lightning_modules.classifier import ImageClassifier
from energymask.lightning_modules.datamodules import TensorDataModule
from energymask.lightning_modules.ersm_callback import ERSMCallback
from energymask.lightning_modules.pbedropout_callback import PBEDropoutCallback
from energymask.models import Classifier, small_cnn

torch.set_num_threads(1)


def net():
    return Classifier(small_cnn(widths=(4, 8, 8)), 8, 3)


def fit(tmp_path, callbacks):
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 3, (16,), generator=g)
    module = ImageClassifier(net(), 3, lr=1e-2)
    t = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
    t.fit(module, datamodule=TensorDataModule((x, y), batch_size=8))
    return module.eval(), t.checkpoint_callback.best_model_path, x


def test_reproduces_trained_outputs(tmp_path):
    module, ckpt, x = fit(tmp_path, [ERSMCallback("model.backbone.layer2", lam=0.1,
                                                  token_size=2, bias_init=0.0)])
    loaded = load_for_inference(ckpt, ImageClassifier, model=net())
    assert not loaded.training
    assert isinstance(loaded.model.backbone.layer2.layer, EnergyMask2d)
    assert loaded.model.backbone.layer2.layer.token_size == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))


def test_reinserts_pbedropout_with_ema_masks(tmp_path):
    cb = PBEDropoutCallback("model.backbone.layer1", p=0.3, patch_size=2, freeze_at_epoch=3)
    module, ckpt, x = fit(tmp_path, [cb])
    loaded = load_for_inference(ckpt, ImageClassifier, model=net())
    ema = loaded.model.backbone.layer1.layer.ema_mask
    assert ema.numel() > 0
    torch.testing.assert_close(ema, module.model.backbone.layer1.layer.ema_mask)
    offset = loaded.model.backbone.layer1.layer.threshold_offset
    assert offset == module.model.backbone.layer1.layer.threshold_offset != 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))


def test_bad_input(tmp_path):
    with pytest.raises(TypeError, match="module_class must be a LightningModule subclass"):
        load_for_inference(tmp_path / "x.ckpt", torch.nn.Linear)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="is not a Lightning checkpoint"):
        load_for_inference(tmp_path / "plain.pt", ImageClassifier)
