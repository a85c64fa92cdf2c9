"""The one Lightning ``Trainer`` builder of the application (command line, demo, recipes).

Every model the application trains goes through :func:`build_trainer`, so the
command line, ``energymask demo`` and ``benchmarks/results_*.py`` train the same
way. A run folder (``run_dir``) adds what ``energymask train`` guarantees
(docs/reliability.md): a checkpoint at the end of every epoch (``last.ckpt``),
checkpoints written atomically, and the random-number generators saved in each
checkpoint so a resumed run continues bit for bit.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from energymask.lightning_modules.random_state import RandomState  # the global generators' owner

#: The resumable checkpoint of a run folder, rewritten at the end of every epoch.
LAST_CHECKPOINT = "last.ckpt"


def quiet_lightning() -> None:
    """Silence Lightning's warnings that do not apply to small CPU runs."""
    for pattern in (".*does not have many workers.*", ".*log_every_n_steps.*",
                    ".*LeafSpec.*", ".*GPU available but not used.*",
                    ".*module\\(s\\) in eval mode.*", ".*Checkpoint directory.*exists.*",
                    ".*Experiment logs directory.*exists.*"):
        warnings.filterwarnings("ignore", message=pattern)


def atomic_replace(tmp: Path, path: Path) -> None:
    """Move the fully written ``tmp`` over ``path`` in one step (flushed to disk first)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def temporary_path(path: Path) -> Path:
    """A hidden file name next to ``path`` (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


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


class EpochCheckpoint(pl.Callback):
    """Writes ``path`` (the resumable checkpoint) at the end of every training epoch.

    ``on_train_epoch_end`` runs after the epoch's validation, so a run resumed from
    it starts the next epoch exactly where the uninterrupted run would.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path)


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
        log_dir: the CSVLogger writes ``log_dir/metrics.csv``; None: no logger.
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
        logger = CSVLogger(log_dir.parent, name=log_dir.name, version="")
    return pl.Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=1, callbacks=callbacks,
        logger=logger, enable_checkpointing=run_dir is not None, plugins=plugins,
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10,
    )  # fmt: skip


__all__ = ["LAST_CHECKPOINT", "AtomicCheckpointIO", "EpochCheckpoint", "RandomState",
           "build_trainer", "quiet_lightning"]
