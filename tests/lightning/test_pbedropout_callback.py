"""PBEDropoutCallback: insertion, freezing, logging, resume checks, DDP mask sync, errors."""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from energymask.lightning_modules.pbedropout_callback import PBEDropoutCallback, make_pbedropout
from energymask.pbedropout import PBEDropout2d

from helpers import TinyNet, quiet_trainer, tiny_loader

torch.set_num_threads(1)


class Net(TinyNet, pl.LightningModule):
    """The tiny classifier: conv 4->8 at stride 2, then a ReLU (``features.3``)."""

    def __init__(self) -> None:
        super().__init__(width=8, stride=2, last_relu=True)


class FrozenRecorder(pl.Callback):
    def __init__(self):
        self.frozen = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.frozen.append(pl_module.features[3].layer.frozen)


def test_inserts_freezes_and_logs(tmp_path):
    pl.seed_everything(0)
    model = Net()
    cb = PBEDropoutCallback("features.3", freeze_at_epoch=2, p=0.5, patch_size=2)
    rec = FrozenRecorder()
    t = quiet_trainer(max_epochs=3, callbacks=[cb, rec], logger=pl.loggers.CSVLogger(tmp_path),
                log_every_n_steps=1)
    t.fit(model, tiny_loader())
    layer = model.features[3].layer
    assert isinstance(layer, PBEDropout2d) and cb.layers == {"features.3": layer}
    assert rec.frozen == [False, False, True]
    assert layer.ema_mask.shape == (8, 2, 2)
    assert not torch.equal(layer.ema_mask, torch.ones_like(layer.ema_mask))  # EMA updated
    rows = [r for r in csv.DictReader(open(t.logger.log_dir + "/metrics.csv"))
            if r.get("pbedropout/features.3/drop_rate")]
    rates = [float(r["pbedropout/features.3/drop_rate"]) for r in rows]
    assert len(rates) == 3 and 0.2 < rates[0] < 0.8  # p = 0.5, sampled
    assert rates[2] == 0.5  # frozen: the deterministic masks drop 2 of 4 patches
    assert rows[2]["pbedropout/features.3/energy"] == ""  # no sampling while frozen
    assert "pbedropout/features.3/energy" in t.logged_metrics
    steps = [float(r["pbedropout/features.3/drop_rate_step"])
             for r in csv.DictReader(open(t.logger.log_dir + "/metrics.csv"))
             if r.get("pbedropout/features.3/drop_rate_step")]
    assert len(steps) == 6  # 3 epochs of 2 steps: one realised rate per step
    assert sum(steps[:2]) / 2 == pytest.approx(rates[0])  # the epoch value is their mean
    assert steps[4:] == [0.5, 0.5]  # frozen


def test_resume_keeps_ema_masks(tmp_path):
    def run(epochs, ckpt=None):
        pl.seed_everything(0)
        model = Net()
        cb = PBEDropoutCallback("features.3", p=0.3, patch_size=2)
        t = quiet_trainer(max_epochs=epochs, deterministic=True, enable_checkpointing=True,
                    default_root_dir=tmp_path, callbacks=[cb])
        t.fit(model, tiny_loader(), ckpt_path=ckpt)
        return model, t

    straight, _ = run(2)
    _, first = run(1)
    resumed, _ = run(2, first.checkpoint_callback.best_model_path)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[name], msg=name)
    assert "features.3.layer.ema_mask" in straight.state_dict()


def test_global_draws_get_one_random_state_owner():
    from energymask.lightning_modules import RandomState

    def owners(*callbacks):
        t = quiet_trainer(callbacks=list(callbacks), limit_train_batches=1)
        with pytest.warns(UserWarning, match="cannot be resumed exactly"):  # a plain loader
            t.fit(Net(), tiny_loader())
        return sum(isinstance(c, RandomState) for c in t.callbacks)

    assert owners(PBEDropoutCallback("features.3", patch_size=2)) == 1  # attached
    assert owners(PBEDropoutCallback("features.3", patch_size=2), RandomState()) == 1  # kept
    assert owners(PBEDropoutCallback("features.3", patch_size=2, seed=0)) == 0  # its own


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"freeze_at_epoch": -1}, ValueError, "freeze_at_epoch must be None or an int >= 0"),
        ({"freeze_at_epoch": True}, ValueError, "freeze_at_epoch must be None or an int >= 0"),
        ({"p": 1.5}, ValueError, r"p must be in \[0, 1\), but got 1.5"),
        ({"beta": float("nan")}, ValueError, "beta must be finite, but got nan"),
        ({"drop": 0.1}, TypeError, r"unknown PB-EDropout setting\(s\) \['drop'\]"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        PBEDropoutCallback("features.3", **kwargs)


def test_saved_settings_cover_every_setting_and_rebuild_the_layer():
    cb = PBEDropoutCallback("features.3", freeze_at_epoch=4, p=0.2, seed=3)
    settings = cb.state_dict()["settings"]
    assert settings["freeze_at_epoch"] == 4 and settings["seed"] == 3
    assert settings["beta"] == 0.1 and settings["calibration_rate"] == 0.03  # defaults too
    layer = make_pbedropout(8, settings)
    assert layer.settings.p == 0.2 and layer.channels == 8


@pytest.mark.parametrize("change", [{"freeze_at_epoch": 2}, {"beta": 0.5}])
def test_resume_with_other_settings_is_refused(tmp_path, change):
    def run(epochs, ckpt=None, **kwargs):
        settings = {"p": 0.3, "patch_size": 2, "freeze_at_epoch": 1, **kwargs}
        cb = PBEDropoutCallback("features.3", **settings)
        t = quiet_trainer(max_epochs=epochs, enable_checkpointing=True, default_root_dir=tmp_path,
                    callbacks=[cb])
        t.fit(Net(), tiny_loader(), ckpt_path=ckpt)
        return t

    first = run(1)
    name = next(iter(change))
    with pytest.raises(ValueError, match=f"the checkpoint was made with .*'{name}'"):
        run(2, first.checkpoint_callback.best_model_path, **change)


def test_channels_need_example_input():
    model = Net()
    model.example_input_array = None
    with pytest.raises(ValueError, match="set example_input_array in your module"):
        quiet_trainer(callbacks=[PBEDropoutCallback("features.3")]).fit(model, tiny_loader())


class RankMasks(pl.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        masks = {n: b for n, b in pl_module.named_buffers()
                 if n.endswith(("ema_mask", "threshold_offset"))}
        torch.save(masks, f"{self.folder}/rank{trainer.global_rank}.pt")


class DifferentRanks(PBEDropoutCallback):
    """The real layer, with a different global seed per rank, so the ranks draw different masks."""

    def after_insert(self, trainer, pl_module):
        super().after_insert(trainer, pl_module)
        torch.manual_seed(100 + trainer.global_rank)


class NoSyncCallback(DifferentRanks):
    def sync_masks(self, trainer):
        pass


def test_ddp_ranks_end_with_identical_masks(tmp_path):
    """One 2-process run: two synced layers and an unsynced control."""
    callbacks = [DifferentRanks("features.3", p=0.5, patch_size=2),
                 NoSyncCallback("features.2", p=0.5, patch_size=2),
                 PBEDropoutCallback("features.1", p=0.5, patch_size=2)]
    pl.seed_everything(0)
    t = quiet_trainer(strategy="ddp_spawn", devices=2, max_epochs=1, limit_train_batches=2,
                callbacks=[*callbacks, RankMasks(tmp_path)])
    t.fit(Net(), tiny_loader(n=16))
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    synced = [f"features.{i}.layer.{n}" for i in (1, 3) for n in ("ema_mask", "threshold_offset")]
    control = [f"features.2.layer.{n}" for n in ("ema_mask", "threshold_offset")]
    assert set(a) == set(b) == {*synced, *control}
    for name in synced:
        assert a[name].numel() and not torch.equal(a[name], torch.ones_like(a[name]))
        torch.testing.assert_close(a[name], b[name], msg=name)
    for name in control:  # not synced: the ranks differ, so the test can fail
        assert not torch.equal(a[name], b[name]), name


class CastNet(Net):
    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0].to(self.dtype)), batch[1])


@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "16-true", "bf16-mixed", "16-mixed"])
def test_every_lightning_precision(precision):
    model = CastNet()
    cb = PBEDropoutCallback("features.3", freeze_at_epoch=1, p=0.5, patch_size=2, seed=0)
    t = quiet_trainer(max_epochs=2, precision=precision, callbacks=[cb])
    t.fit(model, tiny_loader())
    layer = model.features[3].layer
    assert layer.ema_mask.dtype == layer.threshold_offset.dtype == torch.float32
    assert not torch.equal(layer.ema_mask, torch.ones_like(layer.ema_mask))
    assert t.logged_metrics["pbedropout/features.3/drop_rate"] == 0.5  # epoch 1: frozen
    assert torch.isfinite(model(torch.randn(2, 1, 8, 8).to(model.dtype))).all()
