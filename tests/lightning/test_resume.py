"""Crash and resume: a run killed with SIGKILL during epoch 2 and resumed from
``last.ckpt`` ends with the weights, EMA masks and optimiser state of a straight
run, bit for bit.

The data go through a random augmentation (a flip from Python's ``random`` and
noise from torch's global generator, as image pipelines draw them), with
``num_workers`` 0 and 2, with and without ``PBEDropoutCallback``, under both
``pytorch_lightning`` and ``lightning.pytorch``. The run trains a tiny CNN with
``ERSMCallback`` on a shuffled ``TensorDataModule``. The killed run is a
subprocess (this file run as a script), which kills itself with SIGKILL at a
fixed batch of epoch 2, so the test does not depend on timing. ``last.ckpt`` is
written at each epoch's end (resume at an epoch boundary) or after every step
(resume mid-epoch). A plain ``DataLoader`` cannot be resumed exactly: the
plugin says so once, at fit start (tests/lightning/test_random_state.py).
"""

from __future__ import annotations

import functools
import importlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import helpers
from helpers import TinyNet

pytestmark = [pytest.mark.filterwarnings("ignore:.*val_dataloader.*no `validation_step`"),
              pytest.mark.filterwarnings("ignore:The dirpath has changed"),
              pytest.mark.filterwarnings("ignore:.*does not have many workers")]

EPOCHS, KILL_EPOCH, KILL_BATCH = 3, 1, 2  # killed at batch 2 of epoch 2 (0-based 1)
NUM_IMAGES, BATCH_SIZE = 12, 4


class Augmented(Dataset):
    """Random images, flipped with probability ½ (Python ``random``) plus noise (torch)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(NUM_IMAGES, 1, 6, 6, generator=g)
        self.y = torch.randint(0, 3, (NUM_IMAGES,), generator=g)

    def __len__(self) -> int:
        return NUM_IMAGES

    def __getitem__(self, i: int):
        x = self.x[i].flip(-1) if random.random() < 0.5 else self.x[i]
        return x + 0.1 * torch.randn_like(x), self.y[i]


@functools.cache
def _classes(package: str):
    L = importlib.import_module(package)

    class Net(TinyNet, L.LightningModule):
        def __init__(self) -> None:
            super().__init__(width=4, last_relu=True, size=6, momentum=0.9)

    class KillDuringEpoch2(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.current_epoch == KILL_EPOCH and args[-1] == KILL_BATCH:
                os.kill(os.getpid(), signal.SIGKILL)

    return L, Net, KillDuringEpoch2


def train(root: Path, package: str, every_n_train_steps: int | None, pbedropout: bool,
          workers: int, ckpt: Path | None = None, kill: bool = False):
    """Fit ``EPOCHS`` epochs of 3 batches (from ``ckpt`` if given); the Trainer."""
    from energymask.lightning_modules import ERSMCallback, PBEDropoutCallback, TensorDataModule

    L, Net, KillDuringEpoch2 = _classes(package)
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    data = TensorDataModule(Augmented(), batch_size=BATCH_SIZE, seed=5, num_workers=workers)
    callbacks = [ERSMCallback("features.1", lam=1e-2, gamma=1e-2),
                 L.callbacks.ModelCheckpoint(root, save_last=True,
                                             every_n_train_steps=every_n_train_steps)]
    if pbedropout:
        callbacks.append(PBEDropoutCallback("features.3", p=0.3, patch_size=2, population=4))
    if kill:
        callbacks.append(KillDuringEpoch2())
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, callbacks=callbacks,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        deterministic=True)
    trainer.fit(Net(), datamodule=data, ckpt_path=ckpt)
    return trainer


@functools.cache
def _straight(root: Path, package: str, pbedropout: bool, workers: int):
    trainer = train(root, package, None, pbedropout, workers)
    return trainer.lightning_module.state_dict(), trainer.optimizers[0].state_dict()


CASES = [  # (package, pbedropout, workers): every pair under lightning.pytorch
    *[("lightning.pytorch", pb, w) for pb in (False, True) for w in (0, 2)],
    ("pytorch_lightning", False, 2), ("pytorch_lightning", True, 0),
]


@pytest.mark.parametrize("every_n_train_steps", [None, 1], ids=["epoch-end", "mid-epoch"])
@pytest.mark.parametrize(("package", "pbedropout", "workers"), CASES,
                         ids=[f"{p}-{'pbedropout' if pb else 'ersm'}-workers{w}"
                              for p, pb, w in CASES])
def test_killed_run_resumes_bit_for_bit(tmp_path_factory, package, pbedropout, workers,
                                        every_n_train_steps):
    tmp_path = tmp_path_factory.mktemp("run")
    killed = subprocess.run(
        [sys.executable, __file__, str(tmp_path), package, str(every_n_train_steps or 0),
         str(int(pbedropout)), str(workers)],
        capture_output=True, text=True, timeout=300, cwd=helpers.ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(  # this file imports helpers
            filter(None, [str(helpers.ROOT / "tests"), os.environ.get("PYTHONPATH")]))})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "last.ckpt"
    state = torch.load(last, weights_only=False)
    stopped = (state["epoch"], state["loops"]["fit_loop"]["epoch_loop.batch_progress"]
               ["current"]["completed"])
    assert stopped == ((KILL_EPOCH, KILL_BATCH - 1) if every_n_train_steps else (0, 3))

    resumed = train(tmp_path / "resumed", package, every_n_train_steps, pbedropout, workers,
                    ckpt=last)
    root = tmp_path_factory.getbasetemp() / f"straight-{package}-{pbedropout}-{workers}"
    expected, expected_optimizer = _straight(root, package, pbedropout, workers)
    got = resumed.lightning_module.state_dict()
    assert expected.keys() == got.keys() and any("ema_mask" in k for k in got) == pbedropout
    for name in expected:  # bit for bit (tensors and the layers' extra state)
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    optimizer = resumed.optimizers[0].state_dict()
    assert optimizer["state"].keys() == expected_optimizer["state"].keys()
    for key, slot in expected_optimizer["state"].items():
        torch.testing.assert_close(optimizer["state"][key]["momentum_buffer"],
                                   slot["momentum_buffer"], rtol=0, atol=0, msg=str(key))


if __name__ == "__main__":  # the run to kill: ROOT PACKAGE EVERY_N_TRAIN_STEPS PBEDROPOUT WORKERS
    steps = int(sys.argv[3]) or None
    train(Path(sys.argv[1]), sys.argv[2], steps, bool(int(sys.argv[4])), int(sys.argv[5]),
          kill=True)
    sys.exit("the run was not killed")
