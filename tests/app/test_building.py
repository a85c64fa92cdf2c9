"""What a run's settings build: model, data module, the trained module from a checkpoint."""

import os

import pytest
import torch
from PIL import Image

from energymask.lightning_modules.app import building
from energymask.lightning_modules.app.options import IMAGENET_NORMALIZE
from energymask.lightning_modules.datamodules import ClutteredDigitsDataModule
from energymask.models import Classifier


def test_build_model_and_errors():
    model = building.build_model("small_cnn", 1, 10)
    assert isinstance(model, Classifier)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"--backbone must be small_cnn, shallow_cnn, "
                                         r"torchvision:NAME or timm:NAME .*but got 'resnet'"):
        building.build_model("resnet", 1, 10)


def test_build_datamodule_and_errors(tmp_path):
    data = {"name": "cluttered-digits", "num_train": 8, "num_val": 4, "num_test": 4,
            "spurious": False}
    dm = building.build_datamodule(data, batch_size=4, seed=1)
    assert isinstance(dm, ClutteredDigitsDataModule) and dm.seed == 1 and dm.batch_size == 4
    tree = tmp_path / "tree" / "a"
    tree.mkdir(parents=True)
    for k in range(10):  # one red image, ten times: every split gets one
        Image.new("RGB", (4, 4), (255, 0, 0)).save(tree / f"{k}.png")
    spec = {"name": "image-folder", "data_dir": str(tree.parent), "image_size": 4}
    plain = building.build_datamodule(spec, batch_size=1, seed=0)
    imagenet = building.build_datamodule({**spec, "normalize": "imagenet"}, batch_size=1, seed=0)
    for dm in (plain, imagenet):
        dm.setup()
    x, z = plain.train_set[0][0], imagenet.train_set[0][0]
    (mean, std) = IMAGENET_NORMALIZE
    assert torch.allclose(z[:, 0, 0], (x[:, 0, 0] - torch.tensor(mean)) / torch.tensor(std))
    with pytest.raises(ValueError, match="--data cifar10 needs --data-dir"):
        building.build_datamodule({"name": "cifar10"}, 4, 0)
    with pytest.raises(ValueError, match=r"data must be one of .*but got 'mnist'"):
        building.build_datamodule({"name": "mnist"}, 4, 0)


def test_qualify_layers():
    model = building.build_model("small_cnn", 1, 10)
    assert building.qualify_layers(model, 1, ["layer2", "backbone.layer3"], "--ersm") == [
        "model.backbone.layer2", "model.backbone.layer3"]
    assert building.qualify_layers(model, 1, ["model.backbone.layer2"], "--ersm") == [
        "model.backbone.layer2"]  # its own answer round-trips (run.json -> --resume)
    with pytest.raises(ValueError, match=r"--ersm: unknown layer 'layer9'; choose from layer1, "
                                         r"layer2, layer3"):
        building.qualify_layers(model, 1, ["layer9"], "--ersm")


def test_load_model_rejects_foreign_checkpoint(tmp_path):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"not a checkpoint")
    spec = {"model": {"backbone": "small_cnn", "in_channels": 1, "num_classes": 10}}
    with pytest.raises(ValueError, match="is not an energymask checkpoint of this run"):
        building.load_model(spec, bad)


def test_checkpoint_model(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 7}}, path)
    assert building.checkpoint_model(path) == {"num_classes": 7, "frozen_backbone": False}
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 7, "num_features": 64}},
               path)
    assert building.checkpoint_model(path)["frozen_backbone"] is True
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"is not a Lightning checkpoint of an ImageClassifier or "
                                         r"FrozenBackboneERSM \(no num_classes hyper-parameter\)"):
        building.checkpoint_model(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoints_are_read_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": {"num_classes": 2}, "evil": _Evil()}, path)
    with pytest.raises(ValueError, match=r"m.ckpt holds objects other than tensors"):
        building.checkpoint_model(path)
    spec = {"model": {"backbone": "small_cnn", "in_channels": 1, "num_classes": 10}}
    with pytest.raises(ValueError, match="is not an energymask checkpoint of this run"):
        building.load_model(spec, path)
    assert not (tmp_path / "pwned").exists()
