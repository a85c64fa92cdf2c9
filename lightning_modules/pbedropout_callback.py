"""PBEDropoutCallback: add PB-EDropout (patch-based energy dropout) to any LightningModule.

``Trainer(callbacks=[PBEDropoutCallback("backbone.layer2", freeze_at_epoch=5, p=0.3)])``
inserts a ``PBEDropout2d`` after each named block at ``setup``, freezes the
masks (train with the deterministic masks, docs/design.md §4) from
``freeze_at_epoch`` on, logs the realised drop rate and the mask energy, and
under DDP averages the EMA masks and the calibration offsets over the processes
at the end of every training epoch, so that every rank ends with the same
masks. Layers without a ``seed`` draw from the global generator: on one process
the callback then attaches a :class:`~.random_state.RandomState` (the one owner
of the global generators) unless the Trainer has one, so a run resumed from a
checkpoint draws the same masks as a straight one.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from energymask.pbedropout import PBEDropout2d, PBEDropoutSettings

from ._inserting import InsertingCallback, rank_zero_info
from .random_state import RandomState

if TYPE_CHECKING:
    import lightning.pytorch as pl

CALLBACK_ONLY = ("freeze_at_epoch",)  # in the saved settings (resume check), not the layer's


def make_pbedropout(channels: int, settings: dict[str, Any]) -> PBEDropout2d:
    """``PBEDropout2d(channels, **settings)`` from a callback's saved settings."""
    return PBEDropout2d(channels, **{k: v for k, v in settings.items() if k not in CALLBACK_ONLY})


class PBEDropoutCallback(InsertingCallback):
    """Insert PB-EDropout layers, freeze their masks on schedule, sync them under DDP.

    Args:
        layers: submodule names (as in ``named_modules()``) to put a layer after;
            ``None`` picks the last submodule with a 4D output for
            ``pl_module.example_input_array``.
        freeze_at_epoch: from this epoch on, call ``layer.freeze()`` (train with the
            deterministic masks); None never freezes. Default: None.
        log_stats: log ``pbedropout/<layer>/drop_rate`` (realised share of dropped
            patches, of the deterministic masks once frozen) and ``energy`` (mean
            energy of the sampled masks; not logged while frozen), from the layer's
            ``last_drop_rate`` / ``last_energy``, averaged over each epoch, and
            ``drop_rate_step``, the realised rate of every step. Default: True.
        **pbedropout_kwargs: ``seed``, ``grid_size`` and the fields of
            :class:`~energymask.pbedropout.PBEDropoutSettings`, passed to
            ``PBEDropout2d(channels, ...)`` and validated here.

    Every setting that changes training (all the layer's settings, defaults
    included, and ``freeze_at_epoch``) is saved in the callback state, and a
    resume with different settings is refused.
    """

    kind = "pbedropout"

    def __init__(
        self,
        layers: str | list[str] | None = None,
        freeze_at_epoch: int | None = None,
        log_stats: bool = True,
        **pbedropout_kwargs: Any,
    ) -> None:
        if freeze_at_epoch is not None and (
            isinstance(freeze_at_epoch, bool) or not isinstance(freeze_at_epoch, int)
            or freeze_at_epoch < 0
        ):
            raise ValueError(
                f"freeze_at_epoch must be None or an int >= 0, but got {freeze_at_epoch!r}"
            )
        self.freeze_at_epoch = freeze_at_epoch
        self.log_stats = log_stats
        layer_only = {k: pbedropout_kwargs.pop(k) for k in ("seed", "grid_size")
                      if k in pbedropout_kwargs}
        settings = asdict(PBEDropoutSettings.of(None, **pbedropout_kwargs))
        super().__init__(layers, {**settings, **layer_only, "freeze_at_epoch": freeze_at_epoch})
        self._world_size: int = 1

    @override
    def make_layer(self, channels: int) -> nn.Module:
        return make_pbedropout(channels, self._settings)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._world_size = trainer.world_size
        super().setup(trainer, pl_module, stage)
        global_draws = self._settings.get("seed") is None  # masks from the global generator
        owned = any(isinstance(c, RandomState) for c in trainer.callbacks)
        if stage == "fit" and global_draws and not owned and trainer.world_size == 1:
            trainer.callbacks.append(RandomState())  # restored with the other callback states
            rank_zero_info(trainer, "PBEDropoutCallback: attached RandomState, which saves the "
                                    "global generators the masks are drawn from in checkpoints")

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "rng_state" in state_dict and self._world_size == 1:  # checkpoints before RandomState
            torch.set_rng_state(torch.tensor(state_dict["rng_state"], dtype=torch.uint8))

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        frozen = self.freeze_at_epoch is not None and trainer.current_epoch >= self.freeze_at_epoch
        for layer in self._layers.values():
            layer.freeze() if frozen else layer.unfreeze()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.log_stats:
            return
        for name, layer in self._layers.items():
            stats = {"drop_rate": layer.last_drop_rate, "energy": layer.last_energy}
            for key, value in stats.items():
                if value is not None:
                    pl_module.log(f"pbedropout/{name}/{key}", float(value),
                                  on_step=False, on_epoch=True)
            if layer.last_drop_rate is not None:  # the realised rate of this step
                pl_module.log(f"pbedropout/{name}/drop_rate_step", float(layer.last_drop_rate),
                              on_step=True, on_epoch=False)
            layer.last_drop_rate = layer.last_energy = None  # log each forward once

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sync_masks(trainer)

    def sync_masks(self, trainer: pl.Trainer) -> None:
        """Average every layer's ``ema_mask`` and ``threshold_offset`` over the processes.

        No-op on one process.
        """
        if trainer.world_size < 2:
            return
        for layer in self._layers.values():
            buffers: list[Tensor] = [layer.threshold_offset, layer.ema_mask]
            for buffer in buffers:
                if buffer.numel():  # ema_mask: allocated at the first training forward
                    buffer.copy_(trainer.strategy.reduce(buffer.detach().clone(),
                                                         reduce_op="mean"))


__all__ = ["PBEDropoutCallback", "make_pbedropout"]
