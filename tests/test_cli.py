"""The energymask command line: help, train -> evaluate -> plot end to end, error messages."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from test_datamodules import write_cifar, write_image_tree

from energymask.lightning_modules.app import cli
from energymask.lightning_modules.app.cli import main

TINY = ["--num-train", "48", "--num-val", "16", "--num-test", "16", "--epochs", "1",
        "--batch-size", "16", "--no-progress", "--accelerator", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fails(capsys, argv, command, match):
    """main(argv) returns 2 with ``energymask <command>: error: ...match...`` on stderr."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"energymask {command}: error: ") and "Traceback" not in err
    assert match in err, err
    return err


# -- help and usage errors ---------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["evaluate"], ["plot"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(['energymask', *command])}")
    assert {"": "train", "train": "--ersm", "evaluate": "--orderings", "plot": "--run",
            "demo": "--quick"}["".join(command)] in out


def test_python_m_energymask_help():
    done = subprocess.run([sys.executable, "-m", "energymask", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(c in done.stdout for c in ("demo", "train", "evaluate", "plot"))


@pytest.mark.parametrize("argv, message", [
    (["nope"], "invalid choice: 'nope'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "required: COMMAND"),
    (["evaluate"], "one of the arguments --run --checkpoint is required"),
    (["train", "--backbone", "resnet"], "invalid choice: 'resnet'"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# -- demo ---------------------------------------------------------------------------------------

def test_demo_passes_arguments(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("energymask.lightning_modules.app.demo")
    fake.run_demo = lambda out_dir, quick=False, seed=0, progress=True: calls.append(
        (out_dir, quick, seed, progress)) or {}
    monkeypatch.setitem(sys.modules, "energymask.lightning_modules.app.demo", fake)
    assert main(["demo", "--out", str(tmp_path / "d"), "--quick", "--seed", "3",
                 "--no-progress"]) == 0
    assert calls == [(tmp_path / "d", True, 3, False)]
    assert main(["demo", "--out", str(tmp_path / "e")]) == 0
    assert calls[1] == (tmp_path / "e", False, 0, True)
    assert "results in" in capsys.readouterr().out


# -- train -> evaluate -> plot ------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    argv = ["train", *TINY, "--ersm", "layer2", "--ersm-lam", "0.01", "--pbedropout", "layer3",
            "--pb-population", "4", "--pb-freeze-epoch", "1", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_train_writes_a_run(run_dir):
    assert {p.name for p in run_dir.iterdir()} >= {"run.json", "model.ckpt", "logs"}
    spec = json.loads((run_dir / "run.json").read_text())
    assert spec["format"] == "energymask-run/1"
    assert spec["data"] == {"name": "cluttered-digits", "num_train": 48, "num_val": 16,
                            "num_test": 16, "spurious": False}
    assert spec["model"] == {"backbone": "small_cnn", "in_channels": 1, "num_classes": 10}
    assert spec["ersm"]["layers"] == ["model.backbone.layer2"] and spec["ersm"]["lam"] == 0.01
    assert spec["pbedropout"]["population"] == 4 and spec["pbedropout"]["freeze_at_epoch"] == 1
    assert 0 <= spec["test"]["test_acc"] <= 1
    header = (run_dir / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "ersm/model.backbone.layer2/keep_ratio" in header and "val_acc" in header


def test_evaluate_then_plot(run_dir, capsys):
    argv = ["evaluate", "--run", run_dir, "--num-samples", "12", "--steps", "4",
            "--fractions", "0", "0.5", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "deletion AUC at backbone.layer2.layer: energy" in out and "mask quality" in out
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert set(result) == {"run", "accuracy", "num_samples", "deletion", "occlusion",
                           "mask_quality", "pbedropout"}
    assert result["num_samples"] == 12
    deletion = result["deletion"]["backbone.layer2.layer"]
    assert set(deletion["auc"]) == {"energy", "magnitude", "random"}
    assert len(deletion["steps"]) == 4 and deletion["num_tokens"] == 16 * 16
    assert all(0 <= a <= 1 for a in deletion["curves"]["random"])
    assert set(result["occlusion"]) == {"random", "object"}
    assert result["occlusion"]["random"]["fractions"] == [0.0, 0.5]
    assert result["occlusion"]["random"]["accuracy"]["model"][0] == pytest.approx(
        result["accuracy"])
    quality = result["mask_quality"]["backbone.layer2.layer"]
    assert set(quality) == {"iou", "pointing", "keep_ratio", "entropy", "hard_sparsity",
                            "relative_sparsity", "keep_gini", "keep_contrast"}
    assert 0 <= result["pbedropout"]["backbone.layer3.layer"]["ema_keep_ratio"] <= 1

    assert main(["plot", "--run", str(run_dir)]) == 0
    written = {Path(line).name for line in capsys.readouterr().out.split()}
    assert written == {"training.png", "deletion.png", "occlusion.png",
                       "masks_backbone_layer2_layer.png", "ema_masks_backbone_layer3_layer.png"}
    for name in written:
        assert (run_dir / "figures" / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_from_checkpoint_with_gradcam(run_dir, capsys):
    argv = ["evaluate", "--checkpoint", run_dir / "model.ckpt", "--num-samples", "4",
            "--steps", "3", "--fractions", "0", "--orderings", "gradcam", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert set(result["deletion"]["backbone.layer2.layer"]["auc"]) == {
        "energy", "magnitude", "random", "gradcam"}
    capsys.readouterr()


def test_train_on_an_image_folder(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "tree", per_class=4, side=12)
    out = tmp_path / "run"
    argv = ["train", "--data", "image-folder", "--data-dir", tree, "--image-size", "16",
            "--backbone", "shallow_cnn", "--epochs", "1", "--batch-size", "4", "--no-progress",
            "--accelerator", "cpu",
            "--out", out]
    assert main([str(a) for a in argv]) == 0
    spec = json.loads((out / "run.json").read_text())
    assert spec["model"] == {"backbone": "shallow_cnn", "in_channels": 3, "num_classes": 3}
    assert spec["data"]["data_dir"] == str(tree.resolve()) and "ersm" not in spec
    assert main(["plot", "--run", str(out)]) == 0  # no evaluation.json, no ERSM: log only
    assert "run `energymask evaluate" in capsys.readouterr().out
    assert (out / "figures" / "training.png").is_file()


def test_train_is_deterministic_by_seed(tmp_path):
    cifar = write_cifar(tmp_path / "cifar-10-batches-py")
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        argv = ["train", "--data", "cifar10", "--data-dir", cifar, "--epochs", "1",
                "--batch-size", "4", "--ersm", "layer3", "--seed", seed, "--no-progress",
                "--accelerator", "cpu",
                "--out", tmp_path / name]
        assert main([str(a) for a in argv]) == 0
        weights.append(torch.load(tmp_path / name / "model.ckpt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    spec = json.loads((tmp_path / "a" / "run.json").read_text())
    assert spec["model"]["in_channels"] == 3 and spec["data"]["name"] == "cifar10"


# -- input errors: a message, exit 2, no traceback --------------------------------------------

def test_train_input_errors(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails(capsys, ["train", *TINY, "--out", tmp_path / "file" / "run"], "train",
           "output folder")
    _fails(capsys, ["train", "--data", "cifar10"], "train", "--data cifar10 needs --data-dir")
    _fails(capsys, ["train", "--data", "cifar10", "--data-dir", tmp_path / "none"], "train",
           "cifar-10-batches-py")
    _fails(capsys, ["train", "--data", "image-folder", "--data-dir", tmp_path], "train",
           "has no class sub-folders")
    _fails(capsys, ["train", *TINY, "--ersm", "layer9", "--out", tmp_path / "r"], "train",
           "unknown layer 'layer9'; choose from layer1, layer2, layer3")
    _fails(capsys, ["train", "--epochs", "0"], "train", "--epochs must be >= 1")
    _fails(capsys, ["train", "--num-train", "0"], "train", "num_train must be a positive int")
    assert not (tmp_path / "r").exists()


def test_not_a_run(tmp_path, run_dir, capsys):
    _fails(capsys, ["evaluate", "--run", tmp_path / "missing"], "evaluate", "does not exist")
    _fails(capsys, ["plot", "--run", tmp_path], "plot",
           "is not an energymask run: expected run.json in it")
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, foreign)
    _fails(capsys, ["evaluate", "--checkpoint", foreign], "evaluate",
           "is not an energymask run: expected run.json next to it")
    (tmp_path / "run.json").write_text('{"epochs": 3}')
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate", "has none")
    (tmp_path / "run.json").write_text("not json")
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate", "with valid JSON")
    (tmp_path / "run.json").write_text((run_dir / "run.json").read_text())
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate", "model.ckpt")
    (tmp_path / "model.ckpt").write_text("garbage")
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate",
           "is not an energymask checkpoint of this run")
    _fails(capsys, ["evaluate", "--run", run_dir, "--steps", "1"], "evaluate",
           "--steps must be >= 2")
    _fails(capsys, ["evaluate", "--run", run_dir, "--num-samples", "0"], "evaluate",
           "--num-samples must be >= 1")


def test_real_bugs_are_not_hidden(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_demo", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["demo"])
