"""Both Lightning packages: the callbacks, modules and data modules under either Trainer."""

from __future__ import annotations

import importlib
import subprocess
import sys

import lightning.pytorch as L
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from energymask.lightning_modules import (
    ERSMCallback,
    ImageClassifier,
    PBEDropoutCallback,
    TensorDataModule,
)
from energymask.lightning_modules._compat import (
    Callback,
    LightningDataModule,
    LightningModule,
    is_lightning_module,
    package_of,
)

from helpers import TinyNet

torch.set_num_threads(1)
PACKAGES = ["lightning.pytorch", "pytorch_lightning"]


def make_trainer(package, **kw):
    base = dict(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False)
    return importlib.import_module(package).Trainer(**{**base, **kw})


def tensors(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def data():
    return TensorDataModule(tensors(), tensors(), batch_size=4)


def user_module(package):
    """A LightningModule as a user writes it (tests/helpers.py), on one package."""

    class Net(TinyNet, importlib.import_module(package).LightningModule):
        pass

    return Net(width=8)


def test_bases_derive_from_both_packages():
    for dual, name in ((Callback, "Callback"), (LightningDataModule, "LightningDataModule"),
                       (LightningModule, "LightningModule")):
        assert issubclass(dual, getattr(L, name)) and issubclass(dual, getattr(pl, name))


def test_package_of_and_is_lightning_module():
    assert package_of(L.Trainer) == "lightning.pytorch"
    assert package_of(pl.Trainer(logger=False)) == "pytorch_lightning"
    assert package_of(ImageClassifier) == "lightning.pytorch"  # the first base
    assert package_of(nn.Linear) is None
    assert is_lightning_module(user_module("pytorch_lightning"))
    assert is_lightning_module(ImageClassifier) and not is_lightning_module(nn.Linear)


@pytest.mark.parametrize("package", PACKAGES)
def test_callbacks_on_the_users_module_with_resume(package, tmp_path):
    def run(epochs, ckpt=None, p=0.3):
        importlib.import_module(package).seed_everything(0)
        model = user_module(package)
        callbacks = [ERSMCallback("features.0", lam=0.5, bias_init=0.0),
                     PBEDropoutCallback("features.2", freeze_at_epoch=1, p=p,
                                        patch_size=2, population=4, generations=1, sweeps=1)]
        t = make_trainer(package, max_epochs=epochs, enable_checkpointing=True,
                         default_root_dir=tmp_path, callbacks=callbacks)
        t.fit(model, DataLoader(TensorDataset(*tensors()), batch_size=4), ckpt_path=ckpt)
        return model, t

    straight, t = run(2)
    logged = set(t.logged_metrics)
    assert {"ersm/features.0/keep_ratio", "pbedropout/features.2/drop_rate"} <= logged
    _, first = run(1)
    ckpt = first.checkpoint_callback.best_model_path
    resumed, _ = run(2, ckpt)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"differs in p: 0.3 in the checkpoint, 0.2 here.*"
                                         r"training state \(checkpoint .*epoch=0.*\.ckpt\)"):
        run(2, ckpt, p=0.2)


@pytest.mark.parametrize("package", PACKAGES)
def test_project_module_and_datamodule_under_either_trainer(package, caplog):
    class TrainOnly(LightningDataModule):  # no val_dataloader: no validation loop
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))),
                              batch_size=2)

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    module = ImageClassifier(net, 3, example_input_array=torch.zeros(1, 1, 8, 8))
    t = make_trainer(package)
    t.fit(module, datamodule=data())
    assert {"train_loss", "val_acc"} <= set(t.logged_metrics)
    bound = vars(module).get("configure_sharded_model")  # the Trainer's package's default
    if package == "pytorch_lightning":
        assert bound.__func__ is pl.LightningModule.configure_sharded_model
    else:
        assert bound is None
    t = make_trainer(package, callbacks=[ERSMCallback(bias_init=0.0)])
    with caplog.at_level("INFO"):
        t.fit(module, datamodule=TrainOnly())
    assert "ERSMCallback: inserted EnergyMask2d after model.0 (layers=None: the last block " \
           "whose output grid is larger than 1x1)" in caplog.text
    assert "val_acc" not in t.logged_metrics and "ersm/model.0/keep_ratio" in t.logged_metrics


def test_a_module_keeps_its_own_hooks_under_the_other_trainer():
    class Own(ImageClassifier):
        def configure_model(self):
            self.configured = True

    module = Own(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), 3)
    make_trainer("pytorch_lightning", max_steps=1).fit(module, datamodule=data())
    assert module.configured and "configure_model" not in vars(module)


def test_one_package_installed_gives_its_own_classes(monkeypatch):
    from energymask.lightning_modules import _compat

    monkeypatch.setattr(_compat, "_installed", {"pytorch_lightning": pl})
    assert _compat._dual("Callback") is pl.Callback
    assert _compat._dual_following_trainer("LightningModule") is pl.LightningModule


def test_no_lightning_installed_names_the_extra():
    code = ("import sys; sys.modules['lightning'] = sys.modules['pytorch_lightning'] = None\n"
            "sys.modules['lightning.pytorch'] = None\n"
            "import energymask.lightning_modules._compat")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "ImportError: energymask.lightning_modules needs Lightning: pip install " \
           "'energymask[lightning]'" in result.stderr


# One package alone: a fresh interpreter whose import system hides the other
# (cheaper than a second virtual environment, and it hides exactly what a missing
# install would: ``import`` and ``importlib.util.find_spec`` both fail).
ALONE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)")
sys.meta_path.insert(0, Hide())
import importlib, torch
torch.set_num_threads(1)
from torch import nn
from energymask.lightning_modules import ERSMCallback, ImageClassifier, MaskLoggerCallback
from energymask.lightning_modules import TensorDataModule, _compat
from energymask.lightning_modules.app.trainer import build_trainer
assert list(_compat._installed) == [PACKAGE], _compat._installed
assert _compat.PACKAGE == PACKAGE
g = torch.Generator().manual_seed(0)
data = (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
board = importlib.import_module(PACKAGE + ".loggers").TensorBoardLogger(OUT)
masks = MaskLoggerCallback(num_images=2)
t = importlib.import_module(PACKAGE).Trainer(
    max_epochs=1, logger=board, enable_progress_bar=False, enable_model_summary=False,
    enable_checkpointing=False, callbacks=[ERSMCallback("model.0", bias_init=0.0), masks])
t.fit(ImageClassifier(net, 3), datamodule=TensorDataModule(data, data, batch_size=4))
assert len(masks.saved) == 1, masks.saved
app = build_trainer(1, [], "cpu", False, run_dir=None)
assert app.__module__.startswith(PACKAGE), type(app)
leaked = [m for m in sys.modules if m.split(".")[0] in HIDDEN]
assert not leaked, leaked
print("ok", PACKAGE)
"""


@pytest.mark.parametrize(("package", "hidden"), [("lightning.pytorch", ("pytorch_lightning",
                                                                         "lightning_fabric")),
                                                  ("pytorch_lightning", ("lightning",))])
def test_works_with_one_package_alone(package, hidden, tmp_path):
    code = f"HIDDEN = {hidden!r}\nPACKAGE = {package!r}\nOUT = {str(tmp_path)!r}\n" + ALONE
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f"ok {package}")
