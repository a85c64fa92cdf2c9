"""LightningModules for image classification: a generic one and the authors' ERSM protocol."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from energymask.models import FrozenBackboneClassifier

from ._compat import LightningModule
from ._inserting import missing_layers_error


class ImageClassifier(LightningModule):
    """Any ``model`` (B, C, H, W) -> (B, classes), trained with cross-entropy.

    AdamW with a cosine learning-rate schedule over ``max_epochs`` (the
    Trainer's when None). Logs ``{train,val,test}_loss`` and ``{train,val,test}_acc``
    (top-1 accuracy over samples). Derives from the ``LightningModule`` of both
    Lightning packages, so either package's Trainer fits it.

    Args:
        model: the network.
        num_classes: classes of the output.
        lr: learning rate. Default: 1e-3.
        weight_decay: AdamW weight decay. Default: 1e-4.
        max_epochs: length of the cosine schedule; None uses ``trainer.max_epochs``.
        example_input_array: optional example batch (used by ERSMCallback(layers=None)).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        max_epochs: int | None = None,
        example_input_array: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, but got {num_classes!r}")
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, but got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, but got {value} (NaN or Inf)")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, but got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, but got {weight_decay}")
        if max_epochs is not None and (
            isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1
        ):
            raise ValueError(f"max_epochs must be None or an int >= 1, but got {max_epochs!r}")
        self.save_hyperparameters(ignore=["model", "example_input_array", "backbone", "head"])
        self.model = model
        self.example_input_array = example_input_array
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "train")
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose inserted layers this module lacks, naming the callbacks."""
        if (missing := missing_layers_error(checkpoint, self)) is not None:
            raise missing

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        t_max = self.hparams.max_epochs or self.trainer.max_epochs
        if t_max is None or t_max < 1:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


class FrozenBackboneERSM(ImageClassifier):
    """Stage 2 of the authors' protocol: frozen backbone -> ERSM -> GAP -> linear head.

    Stage 1 trains ``Classifier(backbone, ...)`` with :class:`ImageClassifier`;
    stage 2 passes its ``backbone`` (and optionally ``head``) here: the backbone
    stays in eval mode without gradients; the ERSM layer and the head are trained
    with the energy regulariser added to the loss (no callback needed).

    Args:
        backbone, num_features, num_classes, head: as in
            :class:`energymask.models.FrozenBackboneClassifier`.
        lr, weight_decay, max_epochs: as in :class:`ImageClassifier`.
        **ersm_kwargs: passed to :class:`EnergyMask2d`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        head: nn.Linear | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        max_epochs: int | None = None,
        **ersm_kwargs: Any,
    ) -> None:
        model = FrozenBackboneClassifier(backbone, num_features, num_classes, head, **ersm_kwargs)
        super().__init__(model, num_classes, lr, weight_decay, max_epochs)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.model.ersm.pop_regularizer()
        loss = self._step(batch, "train")
        reg = self.model.ersm.pop_regularizer()
        if reg is None:
            return loss
        keep = self.model.ersm.last_keep
        self.log("train_reg", reg.detach(), on_step=False, on_epoch=True)
        if keep is not None:
            self.log("train_keep", keep.mean(), on_step=False, on_epoch=True)
        return loss + reg


__all__ = ["FrozenBackboneERSM", "ImageClassifier"]
