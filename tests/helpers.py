"""Helpers shared by test files of several folders (ours): paths, tiny data on disk, tiny models.

Importable as ``helpers`` from every test (``pythonpath = ["tests"]`` in pyproject.toml). Test
files never import each other; what two of them need lives here or in ``conftest.py`` (fixtures).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]  # the repository: README.md, examples/, benchmarks/


# -- data on disk -------------------------------------------------------------------------------

def write_cifar(root, per_batch=3):
    """A tiny cifar-10-batches-py folder: 5 x ``per_batch`` train images, 4 test images."""
    root.mkdir(parents=True)
    gen = np.random.default_rng(1)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", 4)]:
        batch = {b"data": gen.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
                 b"labels": gen.integers(0, 10, size=n).tolist()}
        (root / name).write_bytes(pickle.dumps(batch))
    return root


def write_image_tree(root, per_class=5, side=9):
    """``root/{a,b,c}/k.png``: ``per_class`` random RGB images of ``side`` x ``side``."""
    gen = np.random.default_rng(2)
    for label in "abc":
        (root / label).mkdir(parents=True)
        for k in range(per_class):
            pixels = gen.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{k}.png")
    return root


# -- a tiny LightningModule, its data and Trainer -------------------------------------------------

class TinyNet:
    """The body of the Lightning tests' tiny classifier; mix it into a ``LightningModule`` of
    either package: ``class Net(TinyNet, L.LightningModule)``.

    ``features``: conv 1->4, ReLU, conv 4->``width`` (``stride``), and a ReLU if ``last_relu``
    (indices 0-3); then a mean over space and a linear head to 3 classes. Inputs
    ``(B, 1, size, size)``; ``example_input_array`` (batch 2) unless ``example`` is False.
    Cross-entropy on ``batch[0], batch[1]``; SGD at lr 0.1 with ``momentum``.
    """

    def __init__(self, width: int = 8, stride: int = 1, last_relu: bool = False, size: int = 8,
                 momentum: float = 0.0, example: bool = True) -> None:
        super().__init__()
        layers = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                  nn.Conv2d(4, width, 3, padding=1, stride=stride)]
        self.features = nn.Sequential(*layers, *([nn.ReLU()] if last_relu else []))
        self.head = nn.Linear(width, 3)
        self.momentum = momentum
        if example:
            self.example_input_array = torch.zeros(2, 1, size, size)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=self.momentum)


def tiny_loader(n=8, batch_size=4):
    """``n`` random 8x8 one-channel images with labels in {0, 1, 2}, seeded, not shuffled."""
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 1, 8, 8, generator=g),
                                    torch.randint(0, 3, (n,), generator=g)), batch_size=batch_size)


def quiet_trainer(**kw):
    """A ``pytorch_lightning`` CPU Trainer of one epoch that writes and prints nothing; ``kw``
    override."""
    import pytorch_lightning as pl

    base = dict(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False)
    return pl.Trainer(**{**base, **kw})


# -- compiled against eager -----------------------------------------------------------------------

def compiled_and_eager_layer(layer, x):
    """``layer(x).sum()`` plus its regulariser, and its gradient wrt ``x``: compiled whole-graph
    (``aot_eager``) on the Triton backend, then eager on the default one (the reference on CPU);
    two ``(loss, dx)`` pairs."""
    from energymask.kernels import use_backend

    def loss(x):
        return layer(x).sum() + layer.pop_regularizer()

    with use_backend("triton"):
        got = torch.compile(loss, fullgraph=True, backend="aot_eager")(x)
        (got_dx,) = torch.autograd.grad(got, x)
    want = loss(x)
    (want_dx,) = torch.autograd.grad(want, x)
    return (got, got_dx), (want, want_dx)
