import json
import os

import pytest
import torch
from PIL import Image

from energymask.lightning_modules.app import runs as _runs
from energymask.lightning_modules.datamodules import ClutteredDigitsDataModule
from energymask.models import Classifier


def test_build_model_and_errors():
    model = _runs.build_model("small_cnn", 1, 10)
    assert isinstance(model, Classifier)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"--backbone must be small_cnn, shallow_cnn, "
                                         r"torchvision:NAME or timm:NAME .*but got 'resnet'"):
        _runs.build_model("resnet", 1, 10)


def test_build_datamodule_and_errors(tmp_path):
    data = {"name": "cluttered-digits", "num_train": 8, "num_val": 4, "num_test": 4,
            "spurious": False}
    dm = _runs.build_datamodule(data, batch_size=4, seed=1)
    assert isinstance(dm, ClutteredDigitsDataModule) and dm.seed == 1 and dm.batch_size == 4
    tree = tmp_path / "tree" / "a"
    tree.mkdir(parents=True)
    for k in range(10):  # one red image, ten times: every split gets one
        Image.new("RGB", (4, 4), (255, 0, 0)).save(tree / f"{k}.png")
    spec = {"name": "image-folder", "data_dir": str(tree.parent), "image_size": 4}
    plain = _runs.build_datamodule(spec, batch_size=1, seed=0)
    imagenet = _runs.build_datamodule({**spec, "normalize": "imagenet"}, batch_size=1, seed=0)
    for dm in (plain, imagenet):
        dm.setup()
    x, z = plain.train_set[0][0], imagenet.train_set[0][0]
    (mean, std) = _runs.IMAGENET_NORMALIZE
    assert torch.allclose(z[:, 0, 0], (x[:, 0, 0] - torch.tensor(mean)) / torch.tensor(std))
    with pytest.raises(ValueError, match="--data cifar10 needs --data-dir"):
        _runs.build_datamodule({"name": "cifar10"}, 4, 0)
    with pytest.raises(ValueError, match=r"data must be one of .*but got 'mnist'"):
        _runs.build_datamodule({"name": "mnist"}, 4, 0)


def test_qualify_layers():
    model = _runs.build_model("small_cnn", 1, 10)
    assert _runs.qualify_layers(model, 1, ["layer2", "backbone.layer3"], "--ersm") == [
        "model.backbone.layer2", "model.backbone.layer3"]
    assert _runs.qualify_layers(model, 1, ["model.backbone.layer2"], "--ersm") == [
        "model.backbone.layer2"]  # its own answer round-trips (run.json -> --resume)
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


def test_claim_refuses_a_run_and_a_held_folder(tmp_path):
    with _runs.claim(tmp_path / "run") as folder:
        assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(ValueError, match=r"is in use by another energymask process \(pid "):
            with _runs.claim(folder):
                pass
        _runs.write_run(folder, {})
    with pytest.raises(ValueError, match=r"already holds a run \(run.json\); choose another "
                                         r"folder, continue it with --resume, or replace it "
                                         r"with --overwrite"):
        with _runs.claim(folder):
            pass
    with _runs.claim(folder, resume=True):
        assert (folder / "run.json").is_file()  # resume keeps the run
    (folder / "figures").mkdir()
    (folder / "mine.txt").write_text("")
    with _runs.claim(folder, overwrite=True):
        assert _runs.holds_run(folder) == [] and (folder / "mine.txt").is_file()


def test_write_atomic_replaces_in_one_step(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    _runs.write_atomic(target, "old")

    def crash(tmp, path):
        raise OSError("disk full")

    monkeypatch.setattr(_runs, "atomic_replace", crash)
    with pytest.raises(OSError, match="disk full"):
        _runs.write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_check_checkpoint(tmp_path):
    path = tmp_path / "m.ckpt"
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*m.ckpt' does not exist"):
        _runs.check_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    digest = _runs.sha256(path)
    _runs.check_checkpoint(path, digest)
    _runs.check_checkpoint(path)  # nothing recorded: nothing to compare
    with pytest.raises(ValueError, match=r"m.ckpt' is not the one training wrote: its SHA-256 is "
                                         rf"{digest[:12]}\.\.\., run.json records 000000000000"):
        _runs.check_checkpoint(path, "0" * 64)


def test_checkpoint_model(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 7}}, path)
    assert _runs.checkpoint_model(path) == {"num_classes": 7, "frozen_backbone": False}
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 7, "num_features": 64}},
               path)
    assert _runs.checkpoint_model(path)["frozen_backbone"] is True
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"is not a Lightning checkpoint of an ImageClassifier or "
                                         r"FrozenBackboneERSM \(no num_classes hyper-parameter\)"):
        _runs.checkpoint_model(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoints_are_read_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": {"num_classes": 2}, "evil": _Evil()}, path)
    with pytest.raises(ValueError, match=r"m.ckpt .*UnpicklingError"):  # refused, not run
        _runs.checkpoint_model(path)
    spec = {"model": {"backbone": "small_cnn", "in_channels": 1, "num_classes": 10}}
    with pytest.raises(ValueError, match="is not an energymask checkpoint of this run"):
        _runs.load_model(spec, path)
    assert not (tmp_path / "pwned").exists()


def test_truncate_log_keeps_the_checkpointed_epochs(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,val_acc\n0,2,0.5\n1,5,0.6\n1,6,\n2,8,0.7\n")
    _runs.truncate_log(log, 2)
    assert log.read_text().splitlines() == ["epoch,step,val_acc", "0,2,0.5", "1,5,0.6", "1,6,"]
    _runs.truncate_log(log, 0)
    assert log.read_text().splitlines() == ["epoch,step,val_acc"]
    _runs.truncate_log(tmp_path / "none.csv", 0)  # no log yet: nothing to do
    assert not (tmp_path / "none.csv").exists()
