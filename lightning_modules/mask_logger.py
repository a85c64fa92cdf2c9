"""MaskLoggerCallback: figures of the ERSM keep masks on a fixed batch of validation images."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from typing_extensions import override

from energymask.ersm import energy_mask_layers


def plot_keep_masks(images: Tensor, masks: dict[str, Tensor]) -> Figure:
    """One row per image: the image, then the keep mask of each layer (values in [0, 1]).

    Args:
        images: (N, C, H, W); the first channel (or the RGB channels) is shown.
        masks: layer name -> (N, h, w) keep probabilities.
    """
    n, cols = images.shape[0], 1 + len(masks)
    fig = Figure(figsize=(1.6 * cols, 1.6 * n))
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        img = images[i].float()
        img = img.permute(1, 2, 0) if img.shape[0] == 3 else img[0]
        img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-8)
        axes[i, 0].imshow(img.numpy(), cmap=None if img.dim() == 3 else "gray")
        for j, (name, keep) in enumerate(masks.items(), start=1):
            axes[i, j].imshow(keep[i].float().numpy(), cmap="viridis", vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


class MaskLoggerCallback(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, draw the ERSM keep masks.

    The images are the first ``num_images`` of the first validation batch, kept
    for the whole run so the figures can be compared. Each figure goes to the
    TensorBoard logger (``add_figure("ersm_masks", ...)``) when one is used, and
    as ``masks/epoch=<E>.png`` to the run's folder (``trainer.log_dir``, or
    ``default_root_dir`` without a logger). Drawn on rank 0 only.

    Args:
        every_n_epochs: draw every n validation epochs. Default: 1.
        num_images: images per figure. Default: 8.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8) -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an int >= 1, but got {every_n_epochs!r}")
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an int >= 1, but got {num_images!r}")
        self.every_n_epochs = every_n_epochs
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
        layers = energy_mask_layers(pl_module)
        with torch.no_grad():
            pl_module(self._images.to(pl_module.device))
        masks = {n: m.last_keep.cpu() for n, m in layers.items() if m.last_keep is not None}
        fig = plot_keep_masks(self._images, masks)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("ersm_masks", fig, global_step=trainer.global_step)
        folder = os.path.join(trainer.log_dir or trainer.default_root_dir, "masks")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"epoch={trainer.current_epoch}.png")
        fig.savefig(path, dpi=80)
        self.saved.append(path)


__all__ = ["MaskLoggerCallback", "plot_keep_masks"]
