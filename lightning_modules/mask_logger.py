"""MaskLoggerCallback: figures of the ERSM keep masks on a fixed batch of validation images."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from energymask.ersm import energy_mask_layers

from ._compat import Callback

if TYPE_CHECKING:
    import lightning.pytorch as pl


def figure_writers(loggers: list[Any]) -> list[Any]:
    """The experiments of ``loggers`` that take a Matplotlib figure (``add_figure``).

    TensorBoard's ``SummaryWriter`` does, under either Lightning package (and
    tensorboardX's); found by what the experiment can do, so no logger package is
    imported here.
    """
    writers = []
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if callable(getattr(experiment, "add_figure", None)):
            writers.append(experiment)
    return writers


class MaskLoggerCallback(Callback):
    """Every ``every_n_epochs`` validation epochs, draw the ERSM keep masks.

    The images are the first ``num_images`` of the first validation batch, kept
    for the whole run so the figures can be compared. Each figure goes to the
    logger that takes figures (``add_figure("ersm_masks", ...)``: TensorBoard's,
    of either Lightning package, see :func:`figure_writers`) when one is used, and
    as ``masks/epoch=<E>.png`` to the run's folder (``trainer.log_dir``, or
    ``default_root_dir`` without a logger). Drawn on rank 0 only.

    The figure (:func:`energymask.viz.plot_keep_masks`) names the epoch and has a
    colour bar per layer; it is rendered at ``dpi`` in both places.

    Args:
        every_n_epochs: draw every n validation epochs. Default: 1.
        num_images: images per figure. Default: 8.
        dpi: resolution of the PNG and of the TensorBoard image. Default: 110
            (about 220 pixels per panel).
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, dpi: int = 110) -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an int >= 1, but got {every_n_epochs!r}")
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an int >= 1, but got {num_images!r}")
        if not isinstance(dpi, int) or dpi < 50:
            raise ValueError(f"dpi must be an int >= 50, but got {dpi!r}")
        self.every_n_epochs = every_n_epochs
        self.dpi = dpi
        self.num_images = num_images
        self._images: Tensor | None = None
        self.saved: list[str] = []

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not energy_mask_layers(pl_module):
            raise ValueError(
                "MaskLoggerCallback found no EnergyMask2d layer in the module; add an "
                "ERSMCallback (listed before it) or ERSM layers of your own"
            )

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._images is None:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._images = x[: self.num_images].detach().cpu().clone()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._images is None or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        from energymask.viz import plot_keep_masks  # matplotlib only when drawing

        layers = energy_mask_layers(pl_module)
        with torch.no_grad():
            pl_module(self._images.to(pl_module.device))
        masks = {n: m.last_keep.cpu() for n, m in layers.items() if m.last_keep is not None}
        fig, _ = plot_keep_masks(self._images, masks, epoch=trainer.current_epoch)
        fig.set_dpi(self.dpi)
        for writer in figure_writers(trainer.loggers):
            writer.add_figure("ersm_masks", fig, global_step=trainer.global_step)
        folder = os.path.join(trainer.log_dir or trainer.default_root_dir, "masks")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"epoch={trainer.current_epoch}.png")
        fig.savefig(path, dpi=self.dpi)
        self.saved.append(path)


__all__ = ["MaskLoggerCallback", "figure_writers"]
