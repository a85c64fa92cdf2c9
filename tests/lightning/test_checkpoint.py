"""load_for_inference: rebuild a model trained with the callbacks and reproduce its outputs."""

from __future__ import annotations

import importlib
import os
import pathlib
import pickle

import pytest
import pytorch_lightning as pl
import torch

from energymask.ersm import EnergyMask2d
from energymask.lightning_modules.checkpoint import load_for_inference, read_checkpoint
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


@pytest.mark.parametrize("gate", [{}, {"gate": "hard"}, {"gate": "hard", "keep_target": 0.4}])
def test_reproduces_trained_outputs(tmp_path, gate):
    module, ckpt, x = fit(tmp_path, [ERSMCallback("model.backbone.layer2", lam=0.1,
                                                  token_size=2, bias_init=0.0, **gate)])
    loaded = load_for_inference(ckpt, ImageClassifier, model=net())
    assert not loaded.training
    layer = loaded.model.backbone.layer2.layer
    assert isinstance(layer, EnergyMask2d)
    assert layer.token_size == 2 and layer.gate == gate.get("gate", "soft")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))
    if gate:  # ours executes a binary mask
        assert ((layer.last_keep == 0) | (layer.last_keep == 1)).all()


def test_checkpoint_from_before_the_gate_setting_loads_with_the_authors_gate(tmp_path):
    _, ckpt, _ = fit(tmp_path, [ERSMCallback("model.backbone.layer2", bias_init=0.0)])
    state = torch.load(ckpt, weights_only=False)
    for key, value in state["callbacks"].items():
        if "ERSMCallback" in key:
            for name in ("gate", "keep_target", "gate_noise"):
                del value["settings"][name]
    torch.save(state, tmp_path / "old.ckpt")
    loaded = load_for_inference(tmp_path / "old.ckpt", ImageClassifier, model=net())
    assert loaded.model.backbone.layer2.layer.gate == "soft"


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


class WritesAFile:
    """Unpickling this would create ``path``: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _lightning_checkpoint(tmp_path):
    module, ckpt, x = fit(tmp_path, [ERSMCallback("model.backbone.layer2", bias_init=0.0)])
    return ckpt


def test_bad_input(tmp_path):
    with pytest.raises(TypeError, match="module_class must be a LightningModule subclass"):
        load_for_inference(tmp_path / "x.ckpt", torch.nn.Linear)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"plain.pt is not a Lightning checkpoint \(no "
                                         r"'state_dict' dict; found keys \['weights'\]\)"):
        load_for_inference(tmp_path / "plain.pt", ImageClassifier)


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    ckpt = pathlib.Path(_lightning_checkpoint(tmp_path / "run"))
    data = ckpt.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("not a checkpoint at all")
    (tmp_path / "folder.ckpt").mkdir()
    torch.save(torch.zeros(2), tmp_path / "tensor.ckpt")
    cases = {
        "missing.ckpt": (FileNotFoundError, r"checkpoint .*missing.ckpt does not exist"),
        "folder.ckpt": (ValueError, r"checkpoint .*folder.ckpt is a folder"),
        "empty.ckpt": (ValueError, r"checkpoint .*empty.ckpt is empty \(0 bytes\)"),
        "truncated.ckpt": (ValueError, r"checkpoint .*truncated.ckpt \(\d+ bytes\) is truncated "
                                       r"or corrupted"),
        "text.ckpt": (ValueError, r"text.ckpt \(23 bytes\) is not a PyTorch checkpoint"),
        "tensor.ckpt": (ValueError, r".*tensor.ckpt is not a Lightning checkpoint \(.*found "
                                    r"Tensor\)"),
    }
    for name, (error, match) in cases.items():
        with pytest.raises(error, match=match):
            read_checkpoint(tmp_path / name)
        with pytest.raises(error, match=match):
            load_for_inference(tmp_path / name, ImageClassifier, model=net())


def test_malformed_state_hyper_parameters_and_weights(tmp_path):
    path = _lightning_checkpoint(tmp_path / "run")
    good = torch.load(path, weights_only=True)
    bad_state = {**good, "callbacks": {"x": {"kind": "ersm", "layers": "oops", "settings": {}}}}
    torch.save(bad_state, tmp_path / "state.ckpt")
    with pytest.raises(ValueError, match=r"state.ckpt has a malformed ersm callback state"):
        load_for_inference(tmp_path / "state.ckpt", ImageClassifier, model=net())
    moved = {**good, "callbacks": {k: {**v, "layers": ["model.nope"]} if isinstance(v, dict)
                                   and v.get("kind") == "ersm" else v
                                   for k, v in good["callbacks"].items()}}
    torch.save(moved, tmp_path / "moved.ckpt")
    with pytest.raises(ValueError, match=r"the ersm layers saved in .*moved.ckpt do not fit "
                                         r"ImageClassifier \(layers \['model.nope'\]\): unknown"):
        load_for_inference(tmp_path / "moved.ckpt", ImageClassifier, model=net())
    with pytest.raises(TypeError, match=r"cannot build ImageClassifier from the hyper-parameters "
                                        r"of .*\.ckpt .*pass the missing"):
        load_for_inference(path, ImageClassifier)  # model= not given
    other = Classifier(small_cnn(widths=(4, 8, 16)), 16, 3)
    with pytest.raises(ValueError, match=r"the weights in .*\.ckpt do not fit ImageClassifier"):
        load_for_inference(path, ImageClassifier, model=other)


def test_pickled_function_is_named_as_refused_not_corrupt(tmp_path):
    """torch says "unsupported GLOBAL" for a function, "Unsupported global" for a class."""
    torch.save({"state_dict": {}, "x": os.system}, tmp_path / "fn.ckpt")
    with pytest.raises(ValueError, match=r"fn.ckpt holds objects other than tensors"):
        load_for_inference(tmp_path / "fn.ckpt", ImageClassifier, model=net())


def test_malicious_pickle_runs_nothing(tmp_path):
    """A checkpoint whose pickle would write a file: refused on every path, nothing written."""
    path = _lightning_checkpoint(tmp_path / "run")
    marker = tmp_path / "pwned"
    evil = torch.load(path, weights_only=True)
    evil["hyper_parameters"] = {"payload": WritesAFile(marker)}
    torch.save(evil, tmp_path / "evil.ckpt")
    with open(tmp_path / "evil.pkl", "wb") as f:  # a bare pickle, not a torch zip file
        pickle.dump({"state_dict": {}, "x": WritesAFile(marker)}, f)
    with pytest.raises(ValueError, match=r"evil.ckpt holds objects other than tensors and plain "
                                         r"values.*nothing in it was run"):
        load_for_inference(tmp_path / "evil.ckpt", ImageClassifier, model=net())
    with pytest.raises(ValueError, match=r"evil.pkl \(\d+ bytes\) is not a PyTorch checkpoint"):
        load_for_inference(tmp_path / "evil.pkl", ImageClassifier, model=net())
    for package in ("lightning.pytorch", "pytorch_lightning"):  # resuming: Lightning reads it
        trainer = importlib.import_module(package).Trainer(
            accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
            callbacks=[ERSMCallback("model.backbone.layer2", bias_init=0.0)])
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            trainer.fit(ImageClassifier(net(), 3), datamodule=TensorDataModule(
                (torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))),
                ckpt_path=tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_saved_settings_edited_after_training_are_refused_before_allocating(tmp_path):
    _, ckpt, _ = fit(tmp_path, [ERSMCallback("model.backbone.layer2", token_size=2)])
    state = torch.load(ckpt, weights_only=True)
    for value in state["callbacks"].values():
        if isinstance(value, dict) and value.get("kind") == "ersm":
            value["settings"]["token_size"] = 100_000  # 8 * 1e10 weights: 320 GB if built
    torch.save(state, tmp_path / "edited.ckpt")
    with pytest.raises(ValueError, match=r"edited.ckpt .*make model.backbone.layer2.layer.weight "
                                         r"of shape \(80000000000,\), but the checkpoint's weights "
                                         r"have \(32,\): the saved settings were changed"):
        load_for_inference(tmp_path / "edited.ckpt", ImageClassifier, model=net())


def test_a_checkpoint_with_layers_needs_their_callbacks(tmp_path):
    _, ckpt, _ = fit(tmp_path, [ERSMCallback("model.backbone.layer2", token_size=2),
                                PBEDropoutCallback("model.backbone.layer1", patch_size=2)])
    ersm = (r"this checkpoint holds ERSM layers at model.backbone.layer2: attach "
            r"ERSMCallback\(\['model.backbone.layer2'\], .*token_size=2")
    with pytest.raises(ValueError, match=ersm):  # no callback: the module says it
        ImageClassifier.load_from_checkpoint(ckpt, model=net())
    with pytest.raises(ValueError, match=ersm + r".*PB-EDropout layers at model.backbone.layer1"):
        t = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                       enable_model_summary=False, default_root_dir=tmp_path / "r")
        t.fit(ImageClassifier(net(), 3, lr=1e-2), datamodule=TensorDataModule(
            (torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))), batch_size=8), ckpt_path=ckpt)
    t = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path / "r2",
                   callbacks=[PBEDropoutCallback("model.backbone.layer1", patch_size=2)])
    with pytest.raises(ValueError, match=ersm):  # one of the two callbacks attached
        t.fit(ImageClassifier(net(), 3, lr=1e-2), datamodule=TensorDataModule(
            (torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))), batch_size=8), ckpt_path=ckpt)
