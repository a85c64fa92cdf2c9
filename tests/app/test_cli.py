"""The energymask command line: help, train -> evaluate -> plot end to end, error messages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from energymask.lightning_modules.app import building, commands
from energymask.lightning_modules.app import runs as _runs
from energymask.lightning_modules.app.cli import main

from helpers import write_cifar, write_image_tree

TINY = ["--num-train", "48", "--num-val", "16", "--num-test", "16", "--epochs", "1",
        "--batch-size", "16", "--no-progress", "--accelerator", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_parser_imports_neither_torch_nor_lightning(heavy_imports):
    assert heavy_imports("from energymask.lightning_modules.app.cli import build_parser\n"
                         "build_parser().format_help()") == []


def test_threads_default_and_flag(monkeypatch):
    from energymask.lightning_modules.app.options import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_threads() == 1  # two CPUs: one thread
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_threads() == 8
    assert commands.set_threads(3) == 3 and torch.get_num_threads() == 3
    with pytest.raises(ValueError, match=r"--threads must be an int >= 1, but got 0"):
        commands.set_threads(0)


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
    (["train", "--ersm-gate", "sharp"], "argument --ersm-gate: invalid choice: 'sharp'"),
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
    with _runs.claim(tmp_path / "e"):  # another demo is writing there
        _fails(capsys, ["demo", "--out", tmp_path / "e"], "demo", "is in use by another")
    assert len(calls) == 2


def test_demo_refuses_a_folder_holding_a_run(tmp_path, monkeypatch, capsys):
    """A second demo into the folder of a first one is refused, as `train` is (issue 26)."""
    fake = types.ModuleType("energymask.lightning_modules.app.demo")
    fake.run_demo = lambda out_dir, **kw: (out_dir / "metrics.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "energymask.lightning_modules.app.demo", fake)
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    (out / "metrics.json").write_text('{"the": "full demo"}')
    err = _fails(capsys, ["demo", "--out", out, "--quick"], "demo",
                 "already holds a run (metrics.json); choose another folder, replace it with "
                 "--overwrite")
    assert "--resume" not in err
    assert (out / "metrics.json").read_text() == '{"the": "full demo"}'
    assert main(["demo", "--out", str(out), "--quick", "--overwrite"]) == 0
    assert (out / "metrics.json").read_text() == "{}"


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
    assert {p.name for p in run_dir.iterdir()} >= {"run.json", "model.ckpt", "last.ckpt", "logs"}
    assert not list(run_dir.glob(".*.tmp-*"))  # no temporary file left
    spec = json.loads((run_dir / "run.json").read_text())
    assert spec["format"] == "energymask-run/1"
    assert spec["data"] == {"name": "cluttered-digits", "num_train": 48, "num_val": 16,
                            "num_test": 16, "spurious": False}
    assert spec["model"] == {"backbone": "small_cnn", "in_channels": 1, "num_classes": 10,
                             "frozen_backbone": False, "weights": None}
    assert spec["status"] == "complete" and spec["checkpoint_sha256"] == _runs.sha256(
        run_dir / "model.ckpt")
    assert spec["ersm"]["bias_init"] == 0.0  # the application's default (issue 17)
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
    assert set(result) == {"run", "protocol", "accuracy", "num_samples", "deletion",
                           "occlusion", "mask_quality", "pbedropout"}
    assert result["protocol"]["steps"] == 4 and result["protocol"]["deletion_protocol"] == "binary"
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
                            "relative_sparsity", "keep_gini", "keep_contrast", "undecided",
                            "soft_undecided"}
    layer = result["pbedropout"]["backbone.layer3.layer"]
    assert layer["deterministic_drop_rate"] == 0.0  # p = 0.1 of a 2x2 patch grid: round(0.4) = 0

    assert main(["plot", "--run", str(run_dir)]) == 0
    written = {Path(line).name for line in capsys.readouterr().out.split()}
    assert written == {"training.png", "deletion.png", "occlusion.png",
                       "masks_backbone_layer2_layer.png", "ema_masks_backbone_layer3_layer.png"}
    for name in written:
        assert (run_dir / "figures" / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluations_are_kept_side_by_side(tmp_path, run_dir, capsys):
    """Binary and soft deletion results of two calls both stay (issue 26)."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    shutil.rmtree(out / "evaluations", ignore_errors=True)
    argv = ["evaluate", "--run", out, "--num-samples", "4", "--steps", "2", "--fractions", "0",
            "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    assert main([str(a) for a in [*argv, "--deletion-protocol", "soft"]]) == 0
    kept = sorted(p.name for p in (out / "evaluations").iterdir())
    assert kept == ["001-binary.json", "002-soft.json"]
    binary, soft = (json.loads((out / "evaluations" / k).read_text()) for k in kept)
    assert binary["protocol"]["deletion_protocol"] == "binary"
    assert soft["protocol"]["deletion_protocol"] == "soft"
    assert json.loads((out / "evaluation.json").read_text()) == soft  # the latest
    assert "kept as" in capsys.readouterr().out


def test_failed_start_is_marked_and_retried_without_overwrite(tmp_path, capsys):
    """--accelerator gpu without a GPU: an error, not a traceback; run.json says failed and
    the same command with the CPU needs no --overwrite (issue 26)."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    out = tmp_path / "run"
    argv = ["train", *TINY, "--out", out]
    _fails(capsys, [*argv, "--accelerator", "gpu"], "train", "gpu")
    spec = json.loads((out / "run.json").read_text())
    assert spec["status"] == "failed" and spec["failed_before_first_epoch"] is True
    assert "error" in spec
    assert main([str(a) for a in argv]) == 0  # TINY ends with --accelerator cpu
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    capsys.readouterr()


def test_resume_keeps_every_epoch_in_the_log(tmp_path, capsys):
    """The epochs before a resume stay in logs/metrics.csv (Lightning's logger deleted them)."""
    import csv

    out = tmp_path / "run"
    assert main([str(a) for a in ["train", *TINY, "--out", out]]) == 0
    # as if stopped after epoch 1 of 2: the run is resumable from last.ckpt
    spec = json.loads((out / "run.json").read_text())
    spec["training"]["epochs"] = 2
    spec.update(status="interrupted")
    (out / "run.json").write_text(json.dumps(spec))
    (out / "model.ckpt").unlink()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "logs" / "metrics.csv", newline="")))
    val = [r["epoch"] for r in rows if r.get("val_acc")]
    assert val == ["0", "1"], rows
    capsys.readouterr()


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
    assert spec["model"]["backbone"] == "shallow_cnn" and spec["model"]["num_classes"] == 3
    assert spec["data"]["data_dir"] == str(tree.resolve()) and "ersm" not in spec
    assert main(["plot", "--run", str(out)]) == 0  # no evaluation.json, no ERSM: log only
    assert "run `energymask evaluate" in capsys.readouterr().out
    assert (out / "figures" / "training.png").is_file()


def test_image_folder_flags_and_a_truncated_image(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "tree", per_class=4, side=12)
    jpeg = tree / "a" / "broken.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:1000])  # the header reads, the pixels do not
    argv = ["train", "--data", "image-folder", "--data-dir", tree, "--image-size", "16",
            "--backbone", "shallow_cnn", "--epochs", "1", "--batch-size", "4", "--no-progress",
            "--accelerator", "cpu", "--val-fraction", "0.25"]
    err = _fails(capsys, [*argv, "--out", tmp_path / "r1"], "train",
                 "a/broken.jpg cannot be decoded")
    assert "--bad-images skip" in err
    out = tmp_path / "r2"
    assert main([str(a) for a in [*argv, "--bad-images", "skip", "--num-workers", "1",
                                  "--out", out]]) == 0
    data = json.loads((out / "run.json").read_text())["data"]
    assert (data["val_fraction"], data["bad_images"], data["num_workers"]) == (0.25, "skip", 1)
    dm = building.build_datamodule(data, 4, 0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), dm.num_workers) == (9, 3, 1)  # 13 x 0.25 -> 3


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
    _fails(capsys, ["train", "--backbone", "resnet"], "train", "--backbone must be small_cnn")
    _fails(capsys, ["train", *TINY, "--weights", tmp_path / "w.pt"], "train",
           "--weights loads torchvision / timm weights, but --backbone is 'small_cnn'")
    _fails(capsys, ["train", *TINY, "--frozen-backbone", "--ersm", "layer2"], "train",
           "does not combine with --ersm")
    _fails(capsys, ["train", *TINY, "--ersm", "layer2", "--ersm-token-size", "100000", "--out",
                    tmp_path / "r"], "train",  # 1.6e11 weights if built: refused before
           "token_size=100000 does not fit the 16x16 feature map after 'model.backbone.layer2'")
    _fails(capsys, ["train", *TINY, "--frozen-backbone", "--ersm-token-size", "100000", "--out",
                    tmp_path / "r"], "train",
           "token_size=100000 does not fit the 8x8 feature map of the backbone")
    tree = write_image_tree(tmp_path / "tree", per_class=4, side=8)
    _fails(capsys, ["train", "--data", "image-folder", "--data-dir", tree, "--image-size", "4",
                    "--out", tmp_path / "r"], "train",
           "--image-size 4: the backbone's feature map vanishes for images of 4x4 (Given input "
           "size: (64x1x1). Calculated output size: (64x0x0). Output size is too small); it "
           "needs images of at least 8x8")
    assert not (tmp_path / "r").exists()


def test_not_a_run(tmp_path, run_dir, capsys):
    _fails(capsys, ["evaluate", "--run", tmp_path / "missing"], "evaluate", "does not exist")
    _fails(capsys, ["plot", "--run", tmp_path], "plot",
           "is not an energymask run: expected run.json in it")
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, foreign)
    _fails(capsys, ["evaluate", "--checkpoint", foreign], "evaluate",  # no run.json: Lightning's
           "is not a Lightning checkpoint of an ImageClassifier or FrozenBackboneERSM")
    (tmp_path / "run.json").write_text('{"epochs": 3}')
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate", "has none")
    (tmp_path / "run.json").write_text("not json")
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate", "with valid JSON")
    (tmp_path / "run.json").write_text((run_dir / "run.json").read_text())
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate", "model.ckpt")
    (tmp_path / "model.ckpt").write_text("garbage")
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate",
           "model.ckpt' is not the one training wrote")
    _fails(capsys, ["evaluate", "--run", run_dir, "--steps", "1"], "evaluate",
           "--steps must be >= 2")
    _fails(capsys, ["evaluate", "--run", run_dir, "--num-samples", "0"], "evaluate",
           "--num-samples must be >= 1")


def test_edited_run_and_evaluation_files(tmp_path, run_dir, capsys):
    spec = json.loads((run_dir / "run.json").read_text())
    del spec["model"]
    (tmp_path / "run.json").write_text(json.dumps(spec))
    _fails(capsys, ["evaluate", "--run", tmp_path], "evaluate",
           "run.json' lacks the entries ['model'] that `energymask train` writes")
    run = tmp_path / "copy"
    run.mkdir()
    for name in ("run.json", "model.ckpt"):
        shutil.copy(run_dir / name, run / name)
    for evaluation, problem in (
            ("[1, 2]", "a list, not an object"),
            ('{"accuracy": "high"}', "no number under 'accuracy'"),
            ('{"accuracy": 0.5, "deletion": {"layer2": {"auc": 1}}}', "'deletion' is not a"),
            ('{"accuracy": 0.5, "occlusion": {"random": [0.1]}}', "'occlusion' is not a"),
            ("{", "not valid JSON")):
        (run / "evaluation.json").write_text(evaluation)
        _fails(capsys, ["plot", "--run", run], "plot",
               f"evaluation.json' is not an evaluation.json of `energymask evaluate`: {problem}")


def test_real_bugs_are_not_hidden(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(commands, "demo", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["demo"])


# -- run folders: one run per folder, locked, checked, resumable -------------------------------

def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_out_holding_a_run_is_refused_unless_overwrite(tmp_path, run_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    (out / "notes.txt").write_text("mine")
    before = _listing(out)
    _fails(capsys, ["train", *TINY, "--out", out], "train",
           "already holds a run (run.json, model.ckpt, last.ckpt, logs")
    assert _listing(out) == before  # nothing changed
    assert main([str(a) for a in ["train", *TINY, "--seed", "5", "--out", out,
                                  "--overwrite"]]) == 0
    assert json.loads((out / "run.json").read_text())["training"]["seed"] == 5
    assert (out / "notes.txt").read_text() == "mine"  # only the run's files were replaced
    assert not (out / "evaluation.json").exists()  # the old run's results are gone
    capsys.readouterr()


def test_a_folder_in_use_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "busy"
    with _runs.claim(out):  # another run holds the folder
        before = _listing(out)
        err = _fails(capsys, ["train", *TINY, "--out", out], "train",
                     "is in use by another energymask process (pid")
        assert str(os.getpid()) in err
        assert _listing(out) == before
    with _runs.claim(out):  # released: the folder can be claimed again
        pass


def test_evaluate_checks_the_checkpoint(tmp_path, run_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    eval_args = ["--num-samples", "4", "--steps", "2", "--fractions", "0", "--no-progress"]
    shutil.copy(out / "last.ckpt", out / "model.ckpt")  # a valid checkpoint, but not this one
    _fails(capsys, ["evaluate", "--run", out, *eval_args], "evaluate",
           "model.ckpt' is not the one training wrote: its SHA-256")
    data = (run_dir / "model.ckpt").read_bytes()
    (out / "model.ckpt").write_bytes(data[: len(data) // 2])
    _fails(capsys, ["evaluate", "--run", out, *eval_args], "evaluate",
           "model.ckpt' is not the one training wrote")
    spec = json.loads((out / "run.json").read_text())
    _runs.write_run(out, {**spec, "checkpoint_sha256": None})  # no record: the reader says
    _fails(capsys, ["evaluate", "--run", out, *eval_args], "evaluate",
           "is truncated or corrupted (an incomplete zip archive)")
    (out / "model.ckpt").write_bytes(b"")
    _fails(capsys, ["evaluate", "--run", out, *eval_args], "evaluate", "model.ckpt is empty")
    _runs.write_run(out, {**spec, "status": "interrupted"})
    _fails(capsys, ["evaluate", "--run", out, *eval_args], "evaluate",
           "is not complete (status 'interrupted'); continue it with `energymask train --resume")


def test_evaluate_and_plot_a_lightning_checkpoint(tmp_path, run_dir, capsys):
    """A ModelCheckpoint file without run.json: backbone and data from the options."""
    ckpt = tmp_path / "checkpoints" / "epoch=0.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(run_dir / "last.ckpt", ckpt)
    data = ["--num-train", "48", "--num-val", "16", "--num-test", "16"]
    argv = ["evaluate", "--checkpoint", ckpt, *data, "--num-samples", "4", "--steps", "2",
            "--fractions", "0", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    result = json.loads((ckpt.parent / "evaluation.json").read_text())
    assert "backbone.layer2.layer" in result["deletion"] and result["num_samples"] == 4
    assert main([str(a) for a in ["plot", "--checkpoint", ckpt, *data]]) == 0
    assert (ckpt.parent / "figures" / "masks_backbone_layer2_layer.png").is_file()
    capsys.readouterr()


def test_resume_errors(tmp_path, run_dir, capsys):
    _fails(capsys, ["train", "--resume", run_dir, "--epochs", "3"], "train",
           "--resume continues a run with the settings in its run.json; remove --epochs")
    _fails(capsys, ["train", "--resume", run_dir], "train", "is complete; nothing to resume")
    _fails(capsys, ["train", "--resume", tmp_path], "train", "is not an energymask run")


RESUMABLE = ["train", "--num-train", "160", "--num-val", "16", "--num-test", "16",
             "--batch-size", "16", "--epochs", "4", "--ersm", "layer2", "--pbedropout", "layer3",
             "--pb-population", "4", "--no-progress", "--accelerator", "cpu"]


def test_ctrl_c_then_resume_equals_a_straight_run(tmp_path, capsys):
    """SIGINT to `energymask train` during epoch 2, then --resume: the same weights, bit for bit."""
    # the shuffled order must be a function of (seed, epoch): the data modules' EpochSampler
    pytest.importorskip("energymask.data.resumable", reason="needs the (seed, epoch) order")
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "energymask", *RESUMABLE, "--out", str(cut)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (cut / "last.ckpt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after epoch 1"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # Ctrl-C, once epoch 1 is checkpointed
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert f"`energymask train --resume {cut}` continues from the end of epoch" in err
    spec = json.loads((cut / "run.json").read_text())
    assert spec["status"] == "interrupted" and not (cut / "model.ckpt").exists()

    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    assert main([*RESUMABLE, "--out", str(tmp_path / "straight")]) == 0
    resumed = torch.load(cut / "model.ckpt", weights_only=True)["state_dict"]
    straight = torch.load(tmp_path / "straight" / "model.ckpt", weights_only=True)["state_dict"]
    assert resumed.keys() == straight.keys()
    assert "model.backbone.layer3.layer.ema_mask" in straight
    for k, v in straight.items():
        assert torch.equal(resumed[k], v) if isinstance(v, torch.Tensor) else resumed[k] == v, k
    epochs = [line.split(",") for line in (cut / "logs" / "metrics.csv").read_text().splitlines()]
    assert json.loads((cut / "run.json").read_text())["status"] == "complete"
    assert len(epochs) > 1
    capsys.readouterr()


def test_evaluate_on_two_processes_equals_one(tmp_path, run_dir, capsys):
    # --devices: RobustnessTests in trainer.test; 2 ddp processes on CPU (gloo), 7 images in
    # batches of 2: the last batches differ, DistributedSampler pads one duplicate
    common = ["evaluate", "--run", str(run_dir), "--num-samples", "7", "--batch-size", "2",
              "--steps", "3", "--fractions", "0", "0.5", "--no-progress", "--accelerator", "cpu"]
    assert main([*common, "--devices", "1", "--out", str(tmp_path / "one")]) == 0
    assert "(1 processes)" in capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "energymask", *common, "--devices", "2",
                           "--strategy", "ddp", "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("energymask evaluate: wrote") == 1  # rank 0 only
    one, two = (json.loads((tmp_path / d / "evaluation.json").read_text()) for d in ("one", "two"))
    assert one.pop("run") != two.pop("run")
    # counts: exact. Mask scores: the small CNN's ERSM keep map of an image differs by 1 ulp
    # between a batch of 1 and of 2 on CPU (the last image is alone in one process, paired
    # in two), so they agree to float32 rounding, not bit for bit (docs/design.md §6)
    masks_one, masks_two = one.pop("mask_quality"), two.pop("mask_quality")
    assert two == one and one["num_samples"] == 7
    for layer, scores in masks_one.items():
        assert masks_two[layer] == pytest.approx(scores, rel=1e-6, abs=1e-7)
    assert set(one["occlusion"]) == {"random", "object"}
    _fails(capsys, [*common, "--devices", "0"], "evaluate", "--devices must be >= 1, but got 0")


def test_evaluate_sparse_names_what_it_cannot_run(run_dir, capsys):
    # the run's small CNN has no residual block after its ERSM layer: nothing to run sparsely
    argv = ["evaluate", "--run", str(run_dir), "--num-samples", "4", "--steps", "2",
            "--fractions", "0", "--no-progress", "--sparse"]
    assert main(argv) != 0
    assert "no residual block" in capsys.readouterr().err
