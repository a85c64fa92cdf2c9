"""The one Lightning ``Trainer`` builder of the application (command line, demo, recipes).

Every model the application trains goes through :func:`build_trainer`, so the
command line, ``energymask demo`` and ``benchmarks/results_*.py`` train the same
way. A run folder (``run_dir``) adds what ``energymask train`` guarantees
(docs/reliability.md): a checkpoint at the end of every epoch (``last.ckpt``),
checkpoints written atomically, and the random-number generators saved in each
checkpoint so a resumed run continues bit for bit.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._compat import Callback, lightning
from ..random_state import RandomState  # the global generators' owner
from .runs import LAST_CHECKPOINT, atomic_replace, temporary_path, write_atomic

pl = lightning()  # the one Lightning package of the application (see .._compat)
CSVLogger = lightning("loggers").CSVLogger
TorchCheckpointIO = lightning("plugins.io").TorchCheckpointIO



def quiet_lightning() -> None:
    """Silence Lightning's warnings that do not apply to small CPU runs."""
    for pattern in (".*does not have many workers.*", ".*log_every_n_steps.*",
                    ".*LeafSpec.*", ".*GPU available but not used.*",
                    ".*module\\(s\\) in eval mode.*", ".*Checkpoint directory.*exists.*",
                    ".*Experiment logs directory.*exists.*"):
        warnings.filterwarnings("ignore", message=pattern)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, then renamed: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        try:
            torch.save(checkpoint, tmp)
            atomic_replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class EpochCheckpoint(Callback):
    """Writes ``path`` (the resumable checkpoint) at the end of every training epoch.

    ``on_train_epoch_end`` runs after the epoch's validation, so a run resumed from
    it starts the next epoch exactly where the uninterrupted run would.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path)


def appending_csv_logger(log_dir: Path) -> Any:
    """A ``CSVLogger`` writing ``log_dir/metrics.csv`` after the rows already there.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts, so the
    epochs before a resume would be lost. Here the old rows are put back once the
    writer exists, and the writer is told their columns: it appends (a new column
    rewrites the file with every old row kept). docs/reliability.md.
    """
    logger = CSVLogger(log_dir.parent, name=log_dir.name, version="")
    log = log_dir / "metrics.csv"
    if log.is_file():
        before = log.read_text()
        writer = logger.experiment  # created now: removes the file
        write_atomic(log, before)
        writer.metrics_keys = sorted(next(csv.reader(io.StringIO(before)), []))
    return logger


def build_trainer(
    epochs: int,
    callbacks: Sequence[pl.Callback] = (),
    accelerator: str = "cpu",
    progress: bool = True,
    log_dir: Path | None = None,
    run_dir: Path | None = None,
) -> pl.Trainer:
    """A seeded-run ``Trainer`` on one device.

    Args:
        epochs: ``max_epochs``.
        callbacks: the energymask callbacks (and any other).
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"``. Default: "cpu".
        progress: Lightning's progress bar.
        log_dir: the CSVLogger writes ``log_dir/metrics.csv``, after the rows already
            there (:func:`appending_csv_logger`); None: no logger.
        run_dir: a run folder: ``last.ckpt`` at every epoch end, atomic checkpoint
            writes, generator states in the checkpoints. None: no checkpoints.
    """
    quiet_lightning()
    callbacks = list(callbacks)
    plugins = []
    if run_dir is not None:
        callbacks += [RandomState(), EpochCheckpoint(run_dir / LAST_CHECKPOINT)]
        plugins.append(AtomicCheckpointIO())
    logger: CSVLogger | bool = False
    if log_dir is not None:
        logger = appending_csv_logger(log_dir)
    return pl.Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=1, callbacks=callbacks,
        logger=logger, enable_checkpointing=run_dir is not None, plugins=plugins,
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10,
    )  # fmt: skip


__all__ = ["LAST_CHECKPOINT", "AtomicCheckpointIO", "EpochCheckpoint", "RandomState",
           "appending_csv_logger", "build_trainer", "quiet_lightning"]
