"""The application's one Trainer builder: epoch checkpoints, atomic writes, generator states."""

from pathlib import Path

import pytest
import torch

from energymask.lightning_modules.app import trainer as tr


def test_atomic_checkpoint_io_keeps_the_old_file_on_failure(tmp_path):
    io = tr.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 0}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        io.save_checkpoint({"epoch": 1, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_build_trainer_with_and_without_a_run_folder(tmp_path):
    plain = tr.build_trainer(2, progress=False)
    assert plain.max_epochs == 2 and plain.logger is None and plain.checkpoint_callback is None
    run = tr.build_trainer(1, progress=False, log_dir=tmp_path / "logs", run_dir=tmp_path)
    kinds = {type(c) for c in run.callbacks}
    assert {tr.RandomState, tr.EpochCheckpoint} <= kinds
    assert isinstance(run.strategy.checkpoint_io, tr.AtomicCheckpointIO)
    assert Path(run.logger.log_dir) == tmp_path / "logs"


@pytest.mark.parametrize("second", [{"a": 3.0}, {"a": 3.0, "c": 4.0}])  # same / a new column
def test_appending_csv_logger_keeps_the_rows_of_an_earlier_segment(tmp_path, second):
    import csv

    first = tr.appending_csv_logger(tmp_path / "logs")
    first.log_metrics({"a": 1.0, "epoch": 0}, step=0)
    first.log_metrics({"b": 2.0, "epoch": 0}, step=1)
    first.save()
    resumed = tr.appending_csv_logger(tmp_path / "logs")  # a resumed run, same folder
    resumed.log_metrics({**second, "epoch": 1}, step=2)
    resumed.save()
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv", newline="")))
    assert [(r["epoch"], r["a"], r["b"]) for r in rows] == [("0", "1.0", ""), ("0", "", "2.0"),
                                                           ("1", "3.0", "")]
    assert [r.get("c", "") for r in rows] == ["", "", second.get("c", "") and "4.0"]
