"""One ``trainer.test`` with RobustnessTests on a tiny model, results to JSON (rank 0).

Used by tests/lightning/test_robustness_callback.py in-process (one process) and as a script
(several processes: Lightning's ``ddp`` launcher runs this file again per rank)::

    python tests/_robustness_run.py --package lightning.pytorch --strategy ddp --devices 2 OUT

11 images, batches of 4: 11 is not a multiple of 2 processes x 4, so the last
batches differ in size and DistributedSampler pads one duplicate.
"""

from __future__ import annotations

import argparse
import importlib
import json
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from energymask import EnergyMask2d
from energymask.lightning_modules import ImageClassifier
from energymask.lightning_modules._compat import Callback
from energymask.lightning_modules.robustness_callback import RobustnessTests

NUM_IMAGES, BATCH = 11, 4


def tiny_module() -> ImageClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), EnergyMask2d(4, token_size=2, bias_init=0.0),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    return ImageClassifier(net, 3)


def tiny_test_loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(NUM_IMAGES, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (NUM_IMAGES,), generator=g)
    masks = (torch.rand(NUM_IMAGES, 1, 8, 8, generator=g) > 0.6).float()
    return DataLoader(TensorDataset(x, y, masks), batch_size=BATCH)


def callback() -> RobustnessTests:
    return RobustnessTests(
        deletion={"orderings": ("energy", "magnitude", "random", "gradcam", "feature_ablation"),
                  "steps": 5},
        occlusion={"placement": ["random", "object"], "fill": "noise", "patch_size": 2},
        model="model")


class WriteResults(Callback):
    """Writes the results on rank 0 (under ddp_spawn they live in the spawned processes)."""

    def __init__(self, tests: RobustnessTests, path: str) -> None:
        self.tests, self.path = tests, path

    def on_test_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if k.startswith("robustness/")}
            with open(self.path, "w") as f:
                json.dump({"results": self.tests.results.to_dict(), "metrics": metrics,
                           "world_size": trainer.world_size}, f)


def run(package: str, strategy: str, devices: int, out: str) -> None:
    L = importlib.import_module(package)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    tests = callback()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[tests, WriteResults(tests, out)])
    trainer.test(tiny_module(), dataloaders=tiny_test_loader(), verbose=False)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--package", default="lightning.pytorch")
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("out")
    a = p.parse_args()
    torch.set_num_threads(1)
    run(a.package, a.strategy, a.devices, a.out)
