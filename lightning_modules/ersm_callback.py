"""ERSMCallback: add ERSM (Energy-Regularized Spatial Masking) to any LightningModule.

``Trainer(callbacks=[ERSMCallback(layers="backbone.layer2", lam=1e-2)])`` inserts an
:class:`~energymask.ersm.EnergyMask2d` after each named block at ``setup`` (before
``configure_optimizers``, so its weights are trained) and adds the energy
regulariser of those layers to the loss returned by ``training_step``.
Lightning divides the returned loss by ``accumulate_grad_batches`` itself, so
adding to it is exact under gradient accumulation and mixed precision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor
from typing_extensions import override

from energymask.ersm import EnergyMask2d

from ._inserting import InsertingCallback

if TYPE_CHECKING:
    import lightning.pytorch as pl


def make_ersm(channels: int, settings: dict[str, Any]) -> EnergyMask2d:
    return EnergyMask2d(channels, **settings)


def ersm_stats(layer: EnergyMask2d) -> dict[str, Tensor]:
    """Keep ratio, hard sparsity (share of keep < 0.5) and mean energy of the last forward."""
    keep, energy = layer.last_keep, layer.last_energy
    if keep is None or energy is None:
        return {}
    return {
        "keep": keep.float().mean(),
        "sparsity": (keep < 0.5).float().mean(),
        "energy": energy.float().mean(),
    }


class ERSMCallback(InsertingCallback):
    """Insert ERSM layers and train them with the energy regulariser.

    Args:
        layers: submodule names of the LightningModule (as in ``named_modules()``)
            to put an ERSM layer after. ``None`` picks the last submodule whose
            output is 4D for ``pl_module.example_input_array`` (which must then be set).
        log_stats: log ``ersm/<layer>/{keep,sparsity,energy,reg}`` each epoch. Default: True.
        **ersm_kwargs: passed to :class:`EnergyMask2d` (``lam``, ``gamma``,
            ``token_size``, ``temperature``, ``bias_init``, ...).

    The module's ``training_step`` must return the loss (a tensor or a dict with
    ``"loss"``) and use automatic optimisation.
    """

    kind = "ersm"

    def __init__(
        self, layers: str | list[str] | None = None, log_stats: bool = True, **ersm_kwargs: Any
    ) -> None:
        self.log_stats = log_stats
        super().__init__(layers, ersm_kwargs)

    @override
    def make_layer(self, channels: int) -> EnergyMask2d:
        return make_ersm(channels, self._settings)

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
        loss = out.get("loss") if isinstance(out, dict) else out
        if not isinstance(loss, Tensor):
            raise ValueError(
                "ERSMCallback needs training_step to return the loss (a tensor or a dict with "
                f"'loss'), but it returned {type(out).__name__}"
            )
        total = None
        for name, layer in self._layers.items():
            reg = layer.pop_regularizer()
            if reg is None:
                continue
            total = reg if total is None else total + reg
            if self.log_stats:
                stats = {**ersm_stats(layer), "reg": reg.detach().float()}
                for key, value in stats.items():
                    pl_module.log(f"ersm/{name}/{key}", value, on_step=False, on_epoch=True)
        if total is None:
            return out
        loss = loss + total.to(loss.dtype)
        return {**out, "loss": loss} if isinstance(out, dict) else loss


__all__ = ["ERSMCallback", "ersm_stats", "make_ersm"]
