"""ERSMCallback: add ERSM (Energy-Regularized Spatial Masking) to any LightningModule.

``Trainer(callbacks=[ERSMCallback(layers="backbone.layer2", lam=1e-2)])`` inserts an
:class:`~energymask.ersm.EnergyMask2d` after each named block at ``setup`` (before
``configure_optimizers``, so its weights are trained) and adds the energy
regulariser of those layers to the loss returned by ``training_step``.
Lightning divides the returned loss by ``accumulate_grad_batches`` itself, so
adding to it is exact under gradient accumulation and mixed precision.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from energymask.ersm import EnergyMask2d, ErsmSettings
from energymask.mask_quality import layer_mask_scores, object_masks, small_grid_warning

from ._inserting import InsertingCallback

if TYPE_CHECKING:
    import lightning.pytorch as pl


def ersm_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Every :class:`~energymask.ersm.ErsmSettings` field, defaults filled in, validated.

    Saved in the callback's state as ``asdict(ErsmSettings)``, as the PB-EDropout
    callback saves its settings, so a resume compares all of them (a default
    that changes between versions is caught too). Unknown names: TypeError.
    """
    return asdict(ErsmSettings.of(None, **settings))


def check_token_fits(token_size: int, where: str, grid: tuple[int, int]) -> None:
    """``ValueError`` unless ``token_size`` divides the ``(H, W)`` feature map ``where``."""
    if grid[0] % token_size or grid[1] % token_size:
        raise ValueError(
            f"token_size={token_size} does not fit the {grid[0]}x{grid[1]} feature map {where}: "
            f"a token must divide its height and width (at most {min(grid)}); pick a divisor "
            "or another layer"
        )


def make_ersm(channels: int, settings: dict[str, Any]) -> EnergyMask2d:
    """``EnergyMask2d(channels, **settings)`` from a callback's saved settings.

    Checkpoints saved before the ``gate`` setting existed load with its
    default, the authors' ``"soft"``.
    """
    return EnergyMask2d(channels, **settings)


def batch_object_mask(batch: Any, batch_size: int) -> Tensor | None:
    """The object mask of a ``(x, y, object_mask)`` batch, as the project's data modules give.

    None when the batch has no third element of shape (B, H, W) or (B, 1, H, W).
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 3:
        return None
    try:
        return object_masks(batch[2], batch_size).float()
    except (TypeError, ValueError):  # a third element that is no object mask
        return None


def ersm_stats(layer: EnergyMask2d, object_mask: Tensor | None = None) -> dict[str, Tensor]:
    """Batch means of :func:`~energymask.mask_quality.layer_mask_scores` of the last forward.

    Plus ``energy`` (mean E) when the forward computed the energies (training,
    or ``eval_energies``). ``keep_contrast`` is left out when no image of the
    batch has both object and background. Empty for no forward or B = 0.
    """
    keep = layer.last_keep
    if keep is None or keep.shape[0] == 0:
        return {}
    scores = layer_mask_scores(layer, object_mask)
    stats = {k: v.mean() for k, v in scores.items() if k != "keep_contrast"}
    contrast = scores.get("keep_contrast")
    if contrast is not None and not torch.isnan(contrast).all():
        stats["keep_contrast"] = contrast.nanmean()
    if layer.last_energy is not None:
        stats["energy"] = layer.last_energy.float().mean()
    return stats


class ERSMCallback(InsertingCallback):
    """Insert ERSM layers and train them with the energy regulariser.

    Args:
        layers: submodule names of the LightningModule (as in ``named_modules()``)
            to put an ERSM layer after. ``None`` picks the last submodule whose
            output is 4D for ``pl_module.example_input_array`` (which must then be set).
        log_stats: log the masks' scores per layer, as epoch means. Default: True.
        **ersm_kwargs: passed to :class:`EnergyMask2d` (``lam``, ``gamma``,
            ``token_size``, ``temperature``, ``bias_init``, ``gate``, ...; see
            :class:`~energymask.ersm.ErsmSettings`; ``gate="hard"`` is ours, not
            the authors': the binary mask in training too). The state saved in
            checkpoints holds every setting, defaults included; a resume with
            other settings is refused.

    Logged with ``log_stats``: ``ersm/<layer>/<score>`` from the training
    batches, every ``Trainer(log_every_n_steps)``-th batch (the scores cost a
    device sync), and ``val_ersm/<layer>/<score>`` from every validation batch.
    Scores: ``keep_ratio``, ``hard_sparsity``, ``relative_sparsity``,
    ``keep_gini``, ``entropy``, ``undecided``, ``soft_undecided``
    (:mod:`energymask.mask_quality`), with
    ``(x, y, object_mask)`` batches also ``iou``, ``pointing``,
    ``keep_contrast``; in training also ``energy`` (mean E) and ``reg`` (R).

    The module's ``training_step`` must return the loss (a tensor or a dict with
    ``"loss"``), or None to skip the batch, and use automatic optimisation.
    """

    kind = "ersm"

    def __init__(
        self, layers: str | list[str] | None = None, log_stats: bool = True, **ersm_kwargs: Any
    ) -> None:
        if not isinstance(log_stats, bool):
            raise TypeError(f"log_stats must be a bool, but got {log_stats!r}")
        self.log_stats = log_stats
        self._regs: dict[str, Tensor] = {}
        super().__init__(layers, ersm_settings(ersm_kwargs))

    @override
    def make_layer(self, channels: int) -> EnergyMask2d:
        return make_ersm(channels, self._settings)

    @override
    def check_grid(self, name: str, grid: tuple[int, int]) -> None:
        token = self._settings.get("token_size", 1)
        check_token_fits(token, f"after {name!r}", grid)
        small_grid_warning((grid[0] // token, grid[1] // token), f"ERSM layer after {name!r}")

    @override
    def after_insert(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ValueError(
                "ERSMCallback adds the regulariser to the loss returned by training_step, which "
                "manual optimisation ignores; add `energymask.ersm.collect_regularizer(self)` "
                "to your loss by hand instead"
            )
        original = pl_module.training_step

        def training_step(*args: Any, **kwargs: Any) -> Any:
            for layer in self._layers.values():
                layer.pop_regularizer()  # drop anything left from a previous forward
            out = original(*args, **kwargs)
            return self._add_regularizer(pl_module, out)

        self._wrap(pl_module, "training_step", training_step)

    def _add_regularizer(self, pl_module: pl.LightningModule, out: Any) -> Any:
        popped = {name: layer.pop_regularizer() for name, layer in self._layers.items()}
        regs = {name: reg for name, reg in popped.items() if reg is not None}
        if out is None:
            return None  # Lightning skips the batch; so does the regulariser
        loss = out.get("loss") if isinstance(out, dict) else out
        if not isinstance(loss, Tensor):
            raise ValueError(
                "ERSMCallback needs training_step to return the loss (a tensor or a dict with "
                f"'loss') or None, but it returned {type(out).__name__}"
            )
        self._regs = {n: r.detach().float() for n, r in regs.items()}
        if not regs:
            return out
        loss = loss + torch.stack(list(regs.values())).sum().to(loss.dtype)
        return {**out, "loss": loss} if isinstance(out, dict) else loss

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        regs, self._regs = self._regs, {}
        if self.log_stats and batch_idx % max(trainer.log_every_n_steps, 1) == 0:
            self._log_stats(pl_module, batch, "ersm", regs)

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if self.log_stats:
            self._log_stats(pl_module, batch, "val_ersm", {})

    def _log_stats(self, pl_module: pl.LightningModule, batch: Any, prefix: str,
                   regs: dict[str, Tensor]) -> None:
        for name, layer in self._layers.items():
            if layer.last_keep is None:
                continue
            size = layer.last_keep.shape[0]
            stats = ersm_stats(layer, batch_object_mask(batch, size))
            if name in regs:
                stats["reg"] = regs[name]
            for key, value in stats.items():
                pl_module.log(f"{prefix}/{name}/{key}", value, on_step=False, on_epoch=True,
                              batch_size=size)


__all__ = ["ERSMCallback", "batch_object_mask", "ersm_settings", "ersm_stats", "make_ersm"]
