"""Crash and resume: a run killed with SIGKILL during epoch 2 and resumed from
``last.ckpt`` ends with the weights and EMA masks of a straight run, bit for bit.

Under both ``pytorch_lightning`` and ``lightning.pytorch``. The run trains a
tiny CNN with ``ERSMCallback`` and ``PBEDropoutCallback`` on a shuffled
``TensorDataModule``. The killed run is a subprocess (this file run as
a script), which kills itself with SIGKILL at a fixed batch of epoch 2, so the
test does not depend on timing. ``last.ckpt`` is written at each epoch's end
(resume at an epoch boundary) or after every step (resume mid-epoch).
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.filterwarnings("ignore:.*val_dataloader.*no `validation_step`"),
              pytest.mark.filterwarnings("ignore:The dirpath has changed")]

EPOCHS, KILL_EPOCH, KILL_BATCH = 3, 1, 2  # killed at batch 2 of epoch 2 (0-based 1)


def train(root: Path, package: str, every_n_train_steps: int | None,
          ckpt: Path | None = None, kill: bool = False) -> nn.Module:
    """Fit ``EPOCHS`` epochs of 5 batches (from ``ckpt`` if given); the LightningModule."""
    from energymask.lightning_modules import ERSMCallback, PBEDropoutCallback, TensorDataModule

    L = importlib.import_module(package)
    torch.set_num_threads(1)

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(8, 3)
            self.example_input_array = torch.zeros(2, 1, 8, 8)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    class KillDuringEpoch2(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.current_epoch == KILL_EPOCH and args[-1] == KILL_BATCH:
                os.kill(os.getpid(), signal.SIGKILL)

    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(1)
    data = TensorDataModule((torch.randn(20, 1, 8, 8, generator=g),
                             torch.randint(0, 3, (20,), generator=g)), batch_size=4, seed=5)
    callbacks = [ERSMCallback("features.1", lam=1e-2, gamma=1e-2),
                 PBEDropoutCallback("features.3", p=0.3, patch_size=2, population=4),
                 L.callbacks.ModelCheckpoint(root, save_last=True,
                                             every_n_train_steps=every_n_train_steps)]
    if kill:
        callbacks.append(KillDuringEpoch2())
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, callbacks=callbacks,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        deterministic=True)
    model = Net()
    trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    return model


@pytest.mark.parametrize("every_n_train_steps", [None, 1], ids=["epoch-end", "mid-epoch"])
@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning.pytorch"])
def test_killed_run_resumes_bit_for_bit(tmp_path, package, every_n_train_steps):
    killed = subprocess.run(
        [sys.executable, __file__, str(tmp_path), package, str(every_n_train_steps or 0)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "last.ckpt"
    state = torch.load(last, weights_only=False)
    stopped = (state["epoch"], state["loops"]["fit_loop"]["epoch_loop.batch_progress"]
               ["current"]["completed"])
    assert stopped == ((KILL_EPOCH, KILL_BATCH - 1) if every_n_train_steps else (0, 5))

    resumed = train(tmp_path / "resumed", package, every_n_train_steps, ckpt=last)
    straight = train(tmp_path / "straight", package, every_n_train_steps)
    expected, got = straight.state_dict(), resumed.state_dict()
    assert any("ema_mask" in k for k in expected) and expected.keys() == got.keys()
    for name in expected:  # bit for bit (tensors and the layers' extra state)
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


if __name__ == "__main__":  # the run to kill: ROOT PACKAGE EVERY_N_TRAIN_STEPS (0 = per epoch)
    steps = int(sys.argv[3]) or None
    train(Path(sys.argv[1]), sys.argv[2], steps, kill=True)
    sys.exit("the run was not killed")
