import json

import pytest
import torch

from energymask.lightning_modules.app import runs as _runs
from energymask.lightning_modules.datamodules import ClutteredDigitsDataModule
from energymask.models import Classifier


def test_build_model_and_errors():
    model = _runs.build_model("small_cnn", 1, 10)
    assert isinstance(model, Classifier)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"backbone must be one of \['shallow_cnn', 'small_cnn'\], "
                                         r"but got 'resnet'"):
        _runs.build_model("resnet", 1, 10)


def test_build_datamodule_and_errors():
    data = {"name": "cluttered-digits", "num_train": 8, "num_val": 4, "num_test": 4,
            "spurious": False}
    dm = _runs.build_datamodule(data, batch_size=4, seed=1)
    assert isinstance(dm, ClutteredDigitsDataModule) and dm.seed == 1 and dm.batch_size == 4
    with pytest.raises(ValueError, match="--data cifar10 needs --data-dir"):
        _runs.build_datamodule({"name": "cifar10"}, 4, 0)
    with pytest.raises(ValueError, match=r"data must be one of .*but got 'mnist'"):
        _runs.build_datamodule({"name": "mnist"}, 4, 0)


def test_qualify_layers():
    model = _runs.build_model("small_cnn", 1, 10)
    assert _runs.qualify_layers(model, 1, ["layer2", "backbone.layer3"], "--ersm") == [
        "model.backbone.layer2", "model.backbone.layer3"]
    with pytest.raises(ValueError, match=r"--ersm: unknown layer 'layer9'; choose from layer1, "
                                         r"layer2, layer3"):
        _runs.qualify_layers(model, 1, ["layer9"], "--ersm")


def test_run_file_round_trip(tmp_path):
    _runs.write_run(tmp_path, {"model": {"backbone": "small_cnn"}})
    (tmp_path / "model.ckpt").write_bytes(b"")
    folder, spec = _runs.read_run(tmp_path / "model.ckpt")  # a file inside the run works too
    assert folder == tmp_path and spec["format"] == _runs.FORMAT
    assert spec["model"] == {"backbone": "small_cnn"}


def test_read_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _runs.read_run(tmp_path / "nothing")
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="with valid JSON"):
        _runs.read_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match=r'with "format": "energymask-run/1"'):
        _runs.read_run(tmp_path)


def test_load_model_rejects_foreign_checkpoint(tmp_path):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"not a checkpoint")
    spec = {"model": {"backbone": "small_cnn", "in_channels": 1, "num_classes": 10}}
    with pytest.raises(ValueError, match="is not an energymask checkpoint of this run"):
        _runs.load_model(spec, bad)


def test_prepare_out(tmp_path):
    assert _runs.prepare_out(tmp_path / "a" / "b").is_dir()
    a_file = tmp_path / "file"
    a_file.write_text("")  # a folder cannot be made inside a file, even by root
    with pytest.raises(PermissionError, match=r"output folder .*run' is not writable"):
        _runs.prepare_out(a_file / "run")
