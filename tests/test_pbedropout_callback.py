"""PBEDropoutCallback: insertion, freezing, logging, DDP mask sync, errors.

The callback logic is tested with a small stand-in layer that has the expected
PB-EDropout API (``PBEDropout2d(channels, **kw)``, buffer ``ema_mask``,
``freeze()`` / ``unfreeze()``, ``last_energy``); the tests marked ``real`` use
``energymask.pbedropout`` and are skipped where it is not installed.
"""

from __future__ import annotations

import sys
import types

import pytest
import pytorch_lightning as pl
import torch
from energymask.lightning_modules.pbedropout_callback import PBEDropoutCallback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)


class StandInPBEDropout2d(nn.Module):
    """Per-channel random patch dropout with an EMA mask; the expected API only."""

    def __init__(self, channels: int, p: float = 0.5, patch_size: int = 2, momentum=0.9):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), but got {p}")
        self.p, self.patch_size, self.momentum = p, patch_size, momentum
        self.register_buffer("ema_mask", torch.ones(channels, 2, 2))
        self.frozen = False
        self.last_energy = None

    def freeze(self):
        self.frozen = True

    def unfreeze(self):
        self.frozen = False

    def forward(self, x):
        if not self.training:
            return x * (self.ema_mask >= 0.5).to(x.dtype).repeat_interleave(
                x.shape[-1] // 2, -1).repeat_interleave(x.shape[-2] // 2, -2)
        if self.frozen:
            mask = (self.ema_mask >= 0.5).to(x.dtype).expand(x.shape[0], -1, -1, -1)
        else:
            mask = (torch.rand(x.shape[0], x.shape[1], 2, 2, device=x.device) >= self.p).float()
            self.ema_mask.mul_(self.momentum).add_((1 - self.momentum) * mask.mean(0))
        self.last_energy = mask.sum((-1, -2))
        full = mask.repeat_interleave(x.shape[-1] // 2, -1).repeat_interleave(x.shape[-2] // 2, -2)
        return x * full / (1 - self.p)


@pytest.fixture
def stand_in(monkeypatch):
    module = types.ModuleType("energymask.pbedropout")
    module.PBEDropout2d = StandInPBEDropout2d
    monkeypatch.setitem(sys.modules, "energymask.pbedropout", module)


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Linear(8, 3)
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n=8, batch_size=4):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 1, 8, 8, generator=g),
                                    torch.randint(0, 3, (n,), generator=g)), batch_size=batch_size)


def trainer(**kw):
    base = dict(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False)
    return pl.Trainer(**{**base, **kw})


class FrozenRecorder(pl.Callback):
    def __init__(self):
        self.frozen = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.frozen.append(pl_module.features[3].layer.frozen)


def test_inserts_freezes_and_logs(stand_in, tmp_path):
    pl.seed_everything(0)
    model = Net()
    cb = PBEDropoutCallback("features.3", freeze_at_epoch=2, p=0.5)
    rec = FrozenRecorder()
    t = trainer(max_epochs=3, callbacks=[cb, rec], logger=pl.loggers.CSVLogger(tmp_path))
    t.fit(model, loader())
    layer = model.features[3].layer
    assert isinstance(layer, StandInPBEDropout2d) and cb.layers == {"features.3": layer}
    assert rec.frozen == [False, False, True]
    assert not torch.equal(layer.ema_mask, torch.ones_like(layer.ema_mask))  # EMA updated
    import csv

    rows = list(csv.DictReader(open(t.logger.log_dir + "/metrics.csv")))
    rate = float(rows[0]["pbedropout/features.3/drop_rate"])  # epoch 0, not frozen
    assert 0.2 < rate < 0.8  # p = 0.5
    assert "pbedropout/features.3/energy" in t.logged_metrics


def test_resume_keeps_ema_masks(stand_in, tmp_path):
    def run(epochs, ckpt=None):
        pl.seed_everything(0)
        model = Net()
        t = trainer(max_epochs=epochs, deterministic=True, enable_checkpointing=True,
                    default_root_dir=tmp_path, callbacks=[PBEDropoutCallback("features.3", p=0.3)])
        t.fit(model, loader(), ckpt_path=ckpt)
        return model, t

    straight, _ = run(2)
    _, first = run(1)
    resumed, _ = run(2, first.checkpoint_callback.best_model_path)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[name], msg=name)
    assert "features.3.layer.ema_mask" in straight.state_dict()


def test_bad_settings(stand_in):
    with pytest.raises(ValueError, match="freeze_at_epoch must be None or an int >= 0"):
        PBEDropoutCallback("features.3", freeze_at_epoch=-1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        PBEDropoutCallback("features.3", p=1.5)


def test_channels_need_example_input(stand_in):
    model = Net()
    model.example_input_array = None
    with pytest.raises(ValueError, match="set example_input_array in your module"):
        trainer(callbacks=[PBEDropoutCallback("features.3")]).fit(model, loader())


def test_missing_implementation(monkeypatch):
    monkeypatch.setitem(sys.modules, "energymask.pbedropout", None)
    with pytest.raises(ImportError, match="needs energymask.pbedropout.PBEDropout2d"):
        PBEDropoutCallback("features.3")


class RankMasks(pl.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        masks = {n: b for n, b in pl_module.named_buffers() if n.endswith("ema_mask")}
        torch.save(masks, f"{self.folder}/rank{trainer.global_rank}.pt")


class StandInCallback(PBEDropoutCallback):
    """Uses the stand-in layer in the spawned processes, with a different seed per rank."""

    def make_layer(self, channels):
        return StandInPBEDropout2d(channels, **self._settings)

    def after_insert(self, trainer, pl_module):
        super().after_insert(trainer, pl_module)
        torch.manual_seed(100 + trainer.global_rank)  # ranks draw different masks


class NoSyncCallback(StandInCallback):
    def sync_masks(self, trainer):
        pass


def _ddp_masks(tmp_path, callback):
    pl.seed_everything(0)
    t = trainer(strategy="ddp_spawn", devices=2, max_epochs=1, limit_train_batches=2,
                callbacks=[callback, RankMasks(tmp_path)])
    t.fit(Net(), loader(n=16))
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


def test_ddp_ranks_end_with_identical_masks(tmp_path):
    a, b = _ddp_masks(tmp_path, StandInCallback("features.3", p=0.5))
    assert a.keys() == b.keys() == {"features.3.layer.ema_mask"}
    torch.testing.assert_close(a["features.3.layer.ema_mask"], b["features.3.layer.ema_mask"])
    a, b = _ddp_masks(tmp_path, NoSyncCallback("features.3", p=0.5))  # the test can fail
    assert not torch.equal(a["features.3.layer.ema_mask"], b["features.3.layer.ema_mask"])


def test_ddp_with_real_pbedropout(tmp_path):
    pytest.importorskip("energymask.pbedropout")
    a, b = _ddp_masks(tmp_path, PBEDropoutCallback("features.3"))
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name])
