import json
import os

import pytest
import torch

from energymask.lightning_modules.app import runs as _runs


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


def test_truncate_log_keeps_the_checkpointed_epochs(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,val_acc\n0,2,0.5\n1,5,0.6\n1,6,\n2,8,0.7\n")
    _runs.truncate_log(log, 2)
    assert log.read_text().splitlines() == ["epoch,step,val_acc", "0,2,0.5", "1,5,0.6", "1,6,"]
    _runs.truncate_log(log, 0)
    assert log.read_text().splitlines() == ["epoch,step,val_acc"]
    _runs.truncate_log(tmp_path / "none.csv", 0)  # no log yet: nothing to do
    assert not (tmp_path / "none.csv").exists()


def test_runs_imports_neither_torch_nor_lightning(heavy_imports):
    assert heavy_imports("import energymask.lightning_modules.app.runs") == []


def test_keep_evaluation_numbers_and_never_replaces(tmp_path):
    first = _runs.keep_evaluation(tmp_path, '{"a": 1}', "binary")
    second = _runs.keep_evaluation(tmp_path, '{"a": 2}', "binary")
    assert (first.name, second.name) == ("001-binary.json", "002-binary.json")
    assert json.loads(first.read_text()) == {"a": 1}
    assert _runs.keep_evaluation(tmp_path, "{}", "soft").name == "003-soft.json"
    assert _runs.EVALUATIONS in _runs.holds_run(tmp_path)


def test_a_start_that_failed_is_replaced_without_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _runs.write_run(out, {"status": "failed"})
    (out / "logs").mkdir()
    assert _runs.failed_at_start(out)
    with _runs.claim(out):  # no --overwrite needed: nothing was trained
        assert not (out / "run.json").exists() and not (out / "logs").exists()
    _runs.write_run(out, {"status": "failed"})
    (out / "last.ckpt").write_bytes(b"epoch 1")  # failed after an epoch: resumable, kept
    assert not _runs.failed_at_start(out)
    with pytest.raises(ValueError, match="already holds a run"):
        with _runs.claim(out):
            pass


def test_save_figure_is_atomic(tmp_path):
    class Figure:
        def savefig(self, path, dpi, format):
            assert path.name.startswith(".fig.png.tmp-") and format == "png"
            path.write_bytes(b"\x89PNG")

    class Broken:
        def savefig(self, path, dpi, format):
            path.write_bytes(b"half")
            raise OSError("disk full")

    path = _runs.save_figure(Figure(), tmp_path / "fig.png")
    assert path.read_bytes() == b"\x89PNG"
    with pytest.raises(OSError, match="disk full"):
        _runs.save_figure(Broken(), path)
    assert path.read_bytes() == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["fig.png"]
