"""The experiments of docs/design.md §7/§8 as recipes: one function per trained model.

``energymask demo`` and ``benchmarks/results_*.py`` are built from these, so the
demo's numbers and the results tables come from the same code. Every recipe
trains with the application's one ``Trainer`` builder
(:func:`~energymask.lightning_modules.app.trainer.build_trainer`, on CPU; the
callbacks are the product's own path), is seeded, and returns the trained
``nn.Module`` in eval mode together with its test accuracy.

Models (cluttered digits, 64x64, 10 classes):

- ``baseline``: ``small_cnn`` -> GAP -> linear.
- ``frozen_ersm``: the authors' protocol, stage 2 on the baseline's frozen
  backbone: ERSM -> GAP -> the baseline's head, ERSM and head trained.
- ``ersm_inside``: ``small_cnn`` trained from scratch with
  :class:`ERSMCallback` inserting ERSM after ``layer2``.
- ``regularised(kind)``: ``shallow_cnn`` with nothing, ``nn.Dropout``,
  ``nn.Dropout2d``, DropBlock or PB-EDropout (:class:`PBEDropoutCallback`,
  optionally frozen from mid-training) after ``layer2``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from energymask.constants import ORDERINGS
from energymask.dropblock import DropBlock2d
from energymask.evaluation import evaluate
from energymask.models import Classifier, FrozenBackboneClassifier, shallow_cnn, small_cnn
from energymask.surgery import insert_after

from .._compat import lightning
from ..classifier import FrozenBackboneERSM, ImageClassifier
from ..datamodules import ClutteredDigitsDataModule
from ..ersm_callback import ERSMCallback
from ..pbedropout_callback import PBEDropoutCallback
from .evaluating import deletion_results, occlusion_results
from .protocol import EvaluationProtocol
from .settings import ERSM_SETTINGS
from .trainer import build_trainer

pl = lightning()  # the one Lightning package of the application (see .._compat)
REGULARISERS = ("none", "dropout", "dropout2d", "dropblock", "pbedropout")
#: The occlusion settings of the recipes: the evaluation protocol's defaults.
OCCLUSION_FRACTIONS = EvaluationProtocol().fractions
OCCLUSION_PATCH_SIZE = EvaluationProtocol().patch_size
#: On-object occlusion at fractions of a few 8x8 cells (1, 2, 3, 5 of the 64): the
#: digit touches 9.6 cells on average (5 to 15) and fills 6% of the image, so at the
#: random placement's f = 0.1 (6 cells, the most object-filled first) every model
#: was already at chance (docs/results.md), which separates none of them. Measured on
#: the seed-0 demo models (baseline, frozen_ersm, ersm_inside): f = 0.02 (1 cell)
#: 0.670, 0.679, 0.650; f = 0.05 (3 cells) 0.206, 0.206, 0.210; f = 0.1 0.105, 0.106,
#: 0.119 (chance 0.1).
OBJECT_OCCLUSION_FRACTIONS = (0.0, 0.02, 0.03, 0.05, 0.08)
#: Occluded fractions per placement.
OCCLUSION_PLACEMENTS = {"random": OCCLUSION_FRACTIONS, "object": OBJECT_OCCLUSION_FRACTIONS}


@dataclass(frozen=True)
class Budget:
    """Data sizes and epochs of one experiment (defaults: minutes on 2 CPU cores).

    ``epochs`` trains from scratch, ``ersm_epochs`` the frozen protocol's stage 2;
    the deletion test uses the first ``deletion_samples`` test images and
    ``deletion_steps`` evenly spaced token counts.
    """

    num_train: int = 3000
    num_val: int = 500
    num_test: int = 1000
    epochs: int = 6
    ersm_epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    deletion_steps: int = 17
    deletion_samples: int = 300

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def protocol(self, seed: int, orderings: Sequence[str] = ORDERINGS) -> EvaluationProtocol:
        """The evaluation protocol of this budget: its deletion steps and samples, all five
        orderings, the default occlusion, batches of ``batch_size``."""
        return EvaluationProtocol(orderings=tuple(orderings), steps=self.deletion_steps,
                                  deletion_samples=self.deletion_samples,
                                  batch_size=self.batch_size, seed=seed)


QUICK = Budget(num_train=256, num_val=64, num_test=128, epochs=1, ersm_epochs=1,
               deletion_steps=5, deletion_samples=64)  # fmt: skip


def datamodule(budget: Budget, seed: int, spurious: bool = False,
               spurious_strength: float = 0.9) -> ClutteredDigitsDataModule:
    """Cluttered digits of ``budget``'s sizes; splits depend on ``seed`` only.

    ``spurious``: backgrounds tied to the class with probability
    ``spurious_strength`` in train and val, shuffled in test.
    """
    dm = ClutteredDigitsDataModule(budget.num_train, budget.num_val, budget.num_test,
                                   spurious=spurious, spurious_strength=spurious_strength,
                                   seed=seed, batch_size=budget.batch_size, with_masks=True)
    dm.setup()
    return dm


def fit(module: ImageClassifier, dm: pl.LightningDataModule, epochs: int, seed: int,
        callbacks: Sequence[pl.Callback] = (), progress: bool = True,
        log_dir: Path | None = None) -> float:
    """Train ``module`` on CPU for ``epochs`` and return its test accuracy.

    With ``log_dir`` the Lightning log goes to ``log_dir/metrics.csv`` (CSVLogger).
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    trainer = build_trainer(epochs, callbacks, "cpu", progress, log_dir=log_dir)
    trainer.fit(module, datamodule=dm)
    tested = trainer.test(module, datamodule=dm, verbose=False)
    module.eval()
    return float(tested[0]["test_acc"])


def train_baseline(dm, budget: Budget, seed: int, progress: bool = True
                   ) -> tuple[Classifier, float]:
    """``small_cnn`` -> GAP -> linear, trained from scratch."""
    torch.manual_seed(seed)
    net = small_cnn(dm.in_channels)
    model = Classifier(net, net.out_channels, dm.num_classes)
    module = ImageClassifier(model, dm.num_classes, lr=budget.lr, max_epochs=budget.epochs)
    return model, fit(module, dm, budget.epochs, seed, progress=progress)


def train_frozen_ersm(baseline: Classifier, dm, budget: Budget, seed: int,
                      progress: bool = True, **ersm_kwargs: Any
                      ) -> tuple[FrozenBackboneClassifier, float]:
    """Stage 2 of the authors' protocol on a copy of ``baseline``'s backbone and head.

    ``ersm_kwargs`` override :data:`~.settings.ERSM_SETTINGS` (the application's defaults).
    """
    torch.manual_seed(seed)
    backbone, head = copy.deepcopy(baseline.backbone), copy.deepcopy(baseline.head)
    module = FrozenBackboneERSM(backbone, backbone.out_channels, dm.num_classes, head=head,
                                lr=budget.lr, max_epochs=budget.ersm_epochs,
                                **{**ERSM_SETTINGS, **ersm_kwargs})
    accuracy = fit(module, dm, budget.ersm_epochs, seed, progress=progress)
    return module.model, accuracy


def train_ersm_inside(dm, budget: Budget, seed: int, layer: str = "layer2",
                      progress: bool = True, log_dir: Path | None = None,
                      **ersm_kwargs: Any) -> tuple[Classifier, float]:
    """``small_cnn`` with ERSM after ``layer`` (inserted by :class:`ERSMCallback`).

    ``ersm_kwargs`` override :data:`~.settings.ERSM_SETTINGS` (the application's defaults).
    """
    torch.manual_seed(seed)
    net = small_cnn(dm.in_channels)
    model = Classifier(net, net.out_channels, dm.num_classes)
    module = ImageClassifier(model, dm.num_classes, lr=budget.lr, max_epochs=budget.epochs)
    callback = ERSMCallback(f"model.backbone.{layer}", log_stats=log_dir is not None,
                            **{**ERSM_SETTINGS, **ersm_kwargs})
    return model, fit(module, dm, budget.epochs, seed, [callback], progress, log_dir)


def train_regularised(dm, budget: Budget, seed: int, kind: str = "pbedropout",
                      p: float = 0.1, layer: str = "layer2", freeze_at_epoch: int | None = None,
                      progress: bool = True, **pbedropout_kwargs: Any
                      ) -> tuple[Classifier, float]:
    """``shallow_cnn`` with the regulariser ``kind`` (of :data:`REGULARISERS`) after ``layer``.

    ``p`` is the drop rate of every kind; ``freeze_at_epoch`` and
    ``pbedropout_kwargs`` (``beta``, ``generations``, ...) apply to PB-EDropout.
    """
    if kind not in REGULARISERS:
        raise ValueError(f"kind must be one of {list(REGULARISERS)}, but got {kind!r}")
    torch.manual_seed(seed)
    net = shallow_cnn(dm.in_channels)
    model = Classifier(net, net.out_channels, dm.num_classes)
    simple = {"dropout": lambda name, c: nn.Dropout(p),
              "dropout2d": lambda name, c: nn.Dropout2d(p),
              "dropblock": lambda name, c: DropBlock2d(p, block_size=3)}
    callbacks: list[pl.Callback] = []
    if kind in simple:
        insert_after(net, layer, simple[kind])
    elif kind == "pbedropout":
        callbacks.append(PBEDropoutCallback(f"model.backbone.{layer}", log_stats=False, p=p,
                                            freeze_at_epoch=freeze_at_epoch,
                                            **pbedropout_kwargs))
    module = ImageClassifier(model, dm.num_classes, lr=budget.lr, max_epochs=budget.epochs)
    return model, fit(module, dm, budget.epochs, seed, callbacks, progress)


def eval_loader(dm, num_samples: int | None = None) -> DataLoader:
    """The test split (its first ``num_samples``), in order."""
    test = dm.test_set
    if num_samples is not None and num_samples < len(test):
        test = torch.utils.data.Subset(test, range(num_samples))
    return DataLoader(test, batch_size=dm.batch_size)


def ersm_mask_scores(model: nn.Module, loader: Iterable) -> dict[str, float]:
    """The mask scores of ``model``'s one ERSM layer (:func:`energymask.evaluation.evaluate`)."""
    (scores,) = evaluate(model, loader, progress=False).masks.values()
    return scores


def evaluate_ersm(model: nn.Module, dm, budget: Budget, seed: int, progress: bool = True,
                  orderings: Sequence[str] = ORDERINGS) -> dict[str, Any]:
    """Mask scores over the test split and the deletion test (every ordering) of the
    model's one ERSM layer, under :meth:`Budget.protocol`."""
    (deletion,) = deletion_results(model, dm.test_set, budget.protocol(seed, orderings),
                                   progress).values()
    return {
        "masks": ersm_mask_scores(model, eval_loader(dm)),
        "deletion": deletion,
    }


def occlusion(models: nn.Module | dict[str, nn.Module], dm, seed: int, progress: bool = True
              ) -> dict[str, dict[str, list[float]]]:
    """Accuracy under random and on-object occlusion at :data:`OCCLUSION_PLACEMENTS`'s
    fractions (8x8 patches), each placement under the evaluation protocol with its fractions."""
    out = {}
    for placement, fractions in OCCLUSION_PLACEMENTS.items():
        protocol = EvaluationProtocol(fractions=fractions, placements=(placement,),
                                      batch_size=dm.batch_size, seed=seed)
        results = occlusion_results(models, dm.test_set, protocol, with_masks=True,
                                    progress=progress)
        out[placement] = results[placement]["accuracy"]
    return out


__all__ = [
    "Budget",
    "QUICK",
    "OBJECT_OCCLUSION_FRACTIONS",
    "OCCLUSION_FRACTIONS",
    "OCCLUSION_PLACEMENTS",
    "ORDERINGS",
    "REGULARISERS",
    "datamodule",
    "eval_loader",
    "ersm_mask_scores",
    "evaluate_ersm",
    "fit",
    "occlusion",
    "train_baseline",
    "train_ersm_inside",
    "train_frozen_ersm",
    "train_regularised",
]
