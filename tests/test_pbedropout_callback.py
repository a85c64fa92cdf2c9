"""PBEDropoutCallback: insertion, freezing, logging, DDP mask sync, errors.

The callback logic is tested with a small stand-in layer that has the expected
PB-EDropout API (``PBEDropout2d(channels, **kw)``, buffer ``ema_mask``,
``freeze()`` / ``unfreeze()``, ``last_energy``); the tests marked ``real`` use
``energymask.pbedropout`` and are skipped where it is not installed.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
import types

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from energymask.lightning_modules.pbedropout_callback import PBEDropoutCallback

torch.set_num_threads(1)


class StandInPBEDropout2d(nn.Module):
    """Per-channel random patch dropout with an EMA mask: PBEDropout2d's API only."""

    def __init__(self, channels: int, p: float = 0.5, patch_size: int = 2, ema_decay=0.9):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), but got {p}")
        self.channels, self.p, self.patch_size, self.ema_decay = channels, p, patch_size, ema_decay
        self.register_buffer("ema_mask", torch.empty(0))  # allocated at the first forward
        self.frozen = False
        self.last_drop_rate = self.last_energy = None

    def freeze(self):
        self.frozen = True

    def unfreeze(self):
        self.frozen = False

    def forward(self, x):
        s = self.patch_size
        grid = (x.shape[-2] // s, x.shape[-1] // s)
        if not self.ema_mask.numel():
            self.ema_mask = torch.ones(self.channels, *grid)
        if not self.training or self.frozen:
            mask = (self.ema_mask >= 0.5).float().expand(x.shape[0], -1, -1, -1)
        else:
            mask = (torch.rand(x.shape[0], self.channels, *grid) >= self.p).float()
            self.ema_mask.mul_(self.ema_decay).add_((1 - self.ema_decay) * mask.mean(0))
            self.last_drop_rate = float(1 - mask.mean())
            self.last_energy = float(-mask.sum((-1, -2)).mean())
        full = mask.repeat_interleave(s, -1).repeat_interleave(s, -2)
        return x * full / (1 - self.p)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "ema_mask"  # the lazily allocated buffer takes the saved shape
        if key in state_dict and state_dict[key].shape != self.ema_mask.shape:
            self.ema_mask = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@pytest.fixture
def stand_in(monkeypatch):
    module = types.ModuleType("energymask.pbedropout")
    module.PBEDropout2d = StandInPBEDropout2d
    monkeypatch.setitem(sys.modules, "energymask.pbedropout", module)
    return StandInPBEDropout2d


@pytest.fixture(params=["stand_in", "real"])
def impl(request, monkeypatch):
    """The layer class: the stand-in, and the real PBEDropout2d where installed."""
    if request.param == "real":
        return pytest.importorskip("energymask.pbedropout").PBEDropout2d
    return request.getfixturevalue("stand_in")


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


def test_inserts_freezes_and_logs(impl, tmp_path):
    pl.seed_everything(0)
    model = Net()
    cb = PBEDropoutCallback("features.3", freeze_at_epoch=2, p=0.5, patch_size=2)
    rec = FrozenRecorder()
    t = trainer(max_epochs=3, callbacks=[cb, rec], logger=pl.loggers.CSVLogger(tmp_path))
    t.fit(model, loader())
    layer = model.features[3].layer
    assert isinstance(layer, impl) and cb.layers == {"features.3": layer}
    assert rec.frozen == [False, False, True]
    assert layer.ema_mask.shape == (8, 2, 2)
    assert not torch.equal(layer.ema_mask, torch.ones_like(layer.ema_mask))  # EMA updated
    rows = list(csv.DictReader(open(t.logger.log_dir + "/metrics.csv")))
    rate = float(rows[0]["pbedropout/features.3/drop_rate"])  # epoch 0, not frozen
    assert 0.2 < rate < 0.8  # p = 0.5
    assert "pbedropout/features.3/energy" in t.logged_metrics


def test_resume_keeps_ema_masks(impl, tmp_path):
    def run(epochs, ckpt=None):
        pl.seed_everything(0)
        model = Net()
        cb = PBEDropoutCallback("features.3", p=0.3, patch_size=2)
        t = trainer(max_epochs=epochs, deterministic=True, enable_checkpointing=True,
                    default_root_dir=tmp_path, callbacks=[cb])
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


def test_ddp_ranks_end_with_identical_masks(tmp_path):
    """One 2-process run: synced stand-in, unsynced control, and the real layer if installed."""
    callbacks = [StandInCallback("features.3", p=0.5), NoSyncCallback("features.2", p=0.5)]
    real = importlib.util.find_spec("energymask.pbedropout") is not None
    if real:
        callbacks.append(PBEDropoutCallback("features.1", p=0.5, patch_size=2))
    pl.seed_everything(0)
    t = trainer(strategy="ddp_spawn", devices=2, max_epochs=1, limit_train_batches=2,
                callbacks=[*callbacks, RankMasks(tmp_path)])
    t.fit(Net(), loader(n=16))
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    synced = ["features.3.layer.ema_mask"] + (["features.1.layer.ema_mask"] if real else [])
    assert set(a) == set(b) == {*synced, "features.2.layer.ema_mask"}
    for name in synced:
        assert a[name].numel() and not torch.equal(a[name], torch.ones_like(a[name]))
        torch.testing.assert_close(a[name], b[name], msg=name)
    control = "features.2.layer.ema_mask"  # not synced: the ranks differ, so the test can fail
    assert not torch.equal(a[control], b[control])
